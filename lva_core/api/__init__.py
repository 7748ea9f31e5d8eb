"""The gRPC surface: server, interceptor, rate limit, servicers."""
