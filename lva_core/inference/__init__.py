"""Batched, asynchronous inference on Triton: model metadata, shared memory, client and batcher."""
