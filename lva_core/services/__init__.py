"""Thin gRPC servicers over the core's domain modules."""
