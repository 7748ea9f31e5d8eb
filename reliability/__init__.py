"""Fault injection and churn against the real stack: ``make reliability``, tests/test_reliability.py."""
