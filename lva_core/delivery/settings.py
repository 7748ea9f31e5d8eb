"""The ``delivery`` section of the configuration, typed once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from lva_common.config import ConfigError


@dataclass(frozen=True)
class DeliverySettings:
    # Events one callback of one stream may hold undelivered; beyond it the oldest are dropped.
    max_pending: int = 10000
    # Seconds an undelivered event is kept; older ones are dropped (counted) instead of sent.
    max_age: float = 86400.0
    # Capped exponential backoff between attempts at the same event.
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    # Seconds between looks at the outbox for lanes nobody here delivers yet (a fleet's
    # failover, another agent's events), and the longest a lane sleeps without being woken.
    scan_interval: float = 2.0
    # Events read from the outbox at once per lane.
    batch: int = 32
    # Seconds a stopping core keeps delivering what is pending before it leaves the rest in
    # the outbox for the next start.
    shutdown_grace: float = 2.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DeliverySettings:
        section = config.get("delivery") or {}
        values: dict[str, Any] = {}
        for field in fields(cls):
            if field.name in section and section[field.name] is not None:
                kind = int if field.type in ("int", int) else float
                values[field.name] = kind(section[field.name])
        settings = cls(**values)
        if settings.max_pending < 1 or settings.batch < 1:
            raise ConfigError("delivery.max_pending and delivery.batch must be at least 1")
        if min(settings.max_age, settings.initial_backoff, settings.max_backoff, settings.scan_interval) <= 0:
            raise ConfigError("delivery.max_age, backoffs and scan_interval must be positive")
        return settings

    def backoff(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1`` at one event (``attempt`` >= 1 failures)."""
        return float(min(self.max_backoff, self.initial_backoff * 2 ** max(0, attempt - 1)))
