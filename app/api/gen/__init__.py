"""Generated protobuf / gRPC modules (tools/gen_protos.sh): server API and uni_grpc."""
