"""Generated protobuf module for proto/client.proto (client protocol v2).

Regenerate with `bash tools/gen_protos.sh` (needs grpcio-tools); never edit by hand.
The descriptors live in a private pool so an SDK's own client.proto can coexist.
"""
