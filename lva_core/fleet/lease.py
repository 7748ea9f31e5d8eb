"""Lease arithmetic on the agent's own monotonic clock: pure, no I/O.

The database grants a lease of ``ttl`` seconds from the moment it handles a renewal, on its own
clock. The agent cannot know that moment, only that it came after the request left; so it
counts its lease from the send time of its last successful renewal, which is never later than
the server's. It gives up (self-fences) ``margin`` seconds before even that earlier deadline:
by the time the server's lease runs out and another agent may claim a stream, this agent has
stopped reading it. Clock rates, not clock values, are all the two must agree on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lva_common.config import ConfigError


class FleetConfigError(ConfigError):
    """``fleet.*`` settings the agent cannot work with; the core refuses to start."""


@dataclass(frozen=True)
class LeaseTiming:
    renew_interval: float = 2.0
    ttl: float = 12.0
    margin: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_interval < self.ttl - self.margin:
            raise FleetConfigError(
                f"fleet: renew_interval ({self.renew_interval}) must be above 0 and below "
                f"lease_ttl - fence_margin ({self.ttl} - {self.margin})"
            )
        if self.margin < 0:
            raise FleetConfigError(f"fleet: fence_margin must not be negative, not {self.margin}")


def lease_timing(config: Mapping[str, Any]) -> LeaseTiming:
    """``fleet.renew_interval``, ``lease_ttl`` and ``fence_margin``, checked."""
    fleet = config.get("fleet") or {}
    try:
        values = [float(fleet.get(key, default)) for key, default in _TIMING_KEYS]
    except (TypeError, ValueError):
        raise FleetConfigError(
            "fleet: renew_interval, lease_ttl and fence_margin must be numbers of seconds"
        ) from None
    return LeaseTiming(*values)


_TIMING_KEYS = (("renew_interval", 2.0), ("lease_ttl", 12.0), ("fence_margin", 2.0))


class Lease:
    """What the agent knows of its lease: when its last successful renewal was sent."""

    def __init__(self, timing: LeaseTiming) -> None:
        self.timing = timing
        self.sent_at: float | None = None  # None: no lease held

    def renewed(self, sent_at: float) -> None:
        self.sent_at = sent_at

    def drop(self) -> None:
        self.sent_at = None

    @property
    def held(self) -> bool:
        return self.sent_at is not None

    def fence_at(self) -> float:
        """The monotonic time at which the agent must have stopped its workers."""
        assert self.sent_at is not None
        return self.sent_at + self.timing.ttl - self.timing.margin

    def valid(self, now: float) -> bool:
        """Whether the agent may still run its streams (any thread: one read of one attribute)."""
        sent = self.sent_at
        return sent is not None and now < sent + self.timing.ttl - self.timing.margin

    def must_fence(self, now: float) -> bool:
        return self.sent_at is not None and now >= self.fence_at()

    def next_renewal(self, now: float) -> float:
        """When to renew next: every renew_interval, never later than the fence time."""
        if self.sent_at is None:
            return now
        return min(self.sent_at + self.timing.renew_interval, self.fence_at())
