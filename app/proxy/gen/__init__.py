"""Generated protobuf and gRPC modules for proto/proxy.proto.

Regenerate with `bash tools/gen_proxy_proto.sh` (needs grpcio-tools); never edit by hand.
"""
