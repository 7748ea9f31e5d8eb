"""Per-stream publish/subscribe, with bounded queues per subscriber."""
