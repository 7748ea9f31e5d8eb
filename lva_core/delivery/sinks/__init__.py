"""Transports of outbound events, one class per transport, found through ``lva.sinks`` entry points."""
