"""Developer tools, not shipped in the node binary: protobuf codegen, the one-process demo
stack."""
