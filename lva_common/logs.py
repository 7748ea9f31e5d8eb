"""Logging shared by the core and the facade: every line carries the Luna-Request-Id and, where
one applies, the stream id; ``core.log_format: json`` writes one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar

# Set per RPC by the core's interceptor and per request by the facade; "-" outside a request.
request_id_var: ContextVar[str] = ContextVar("luna_request_id", default="-")
# Set in each stream's worker task, so that everything it logs names its stream.
stream_id_var: ContextVar[str] = ContextVar("stream_id", default="-")


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.stream_id = stream_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "stream_id": getattr(record, "stream_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] [stream %(stream_id)s] %(message)s"


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
