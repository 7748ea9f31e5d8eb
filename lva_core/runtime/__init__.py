"""Processes and the host: the local Triton server, procfs, the make-run stack."""
