"""Generated protocol buffer and gRPC modules."""
