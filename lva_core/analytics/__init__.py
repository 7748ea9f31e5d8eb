"""Analytics plugins: pure functions of model outputs and per-stream state, producing events."""
