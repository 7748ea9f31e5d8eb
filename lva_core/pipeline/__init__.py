"""The frame path of one stream: source, buffer, worker, model routing."""
