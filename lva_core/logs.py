"""Logging set-up shared by the core and the facade; every line carries the Luna-Request-Id."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

# Set per RPC by the core's interceptor, per request by the facade; "-" outside a request.
request_id_var: ContextVar[str] = ContextVar("luna_request_id", default="-")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
