"""What the event bus carries: one typed message per status change or analytics result."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from lva_core.streams.record import StreamRecord
from lva_core.streams.state import Status

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class StreamEvent:
    """The seed's message: the stream's status, its error, and what one analytic found (or {})."""

    status: Status
    error: str | None = None
    results: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @classmethod
    def of(cls, record: StreamRecord, results: Mapping[str, Any] | None = None) -> StreamEvent:
        """The event as the stream stands now, with ``results`` if any."""
        return cls(record.status, record.error, dict(results) if results else _EMPTY)
