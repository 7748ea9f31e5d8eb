"""The gRPC core: streams, decoding, batched inference on Triton, analytics and events."""
