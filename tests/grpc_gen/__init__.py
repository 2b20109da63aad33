"""gRPC client stubs and servicer bases generated for the tests (tools/gen_protos.sh,
tools/gen_proxy_proto.sh). The server itself serves and calls these services through
generic handlers and plain channel methods, so app/ ships only the message modules."""
