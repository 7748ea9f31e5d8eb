"""Triton Inference Server: a local server started from the PyPI wheel, and its health check."""
