"""gRPC servicers, one class per proto service, and their registration and interceptors (no torch here)."""
