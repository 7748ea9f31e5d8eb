"""Prometheus metrics: instruments (a leaf the hot path imports) and collectors apart."""
