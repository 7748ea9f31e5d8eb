"""Per-account token buckets: the rate limit of stream creation (``streams.create_rate``).

Each account (``""`` is the anonymous one) has a bucket of ``burst`` tokens that refills at
``per_second``; a creation takes one token, and an empty bucket answers how long until the next.
The map of buckets is bounded: past ``max_accounts`` the least recently used bucket goes. A
bucket unused for ``burst / per_second`` seconds is full again, the same as a new one, so
forgetting it only matters for an account that was very busy a moment ago and then silent while
``max_accounts`` others were served; the bound keeps memory fixed whatever account ids callers
invent.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

MAX_ACCOUNTS = 10_000


class RateLimiter:
    def __init__(
        self,
        per_second: float,
        burst: int,
        max_accounts: int = MAX_ACCOUNTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_second < 0 or burst < 1 or max_accounts < 1:
            raise ValueError("per_second must be >= 0, burst and max_accounts >= 1")
        self.per_second = per_second
        self.burst = burst
        self.max_accounts = max_accounts
        self._clock = clock
        # account -> (tokens, time of the last update), least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RateLimiter | None:
        """The limiter ``streams.create_rate`` describes, or None when per_second is 0 (no limit)."""
        rate = (config.get("streams") or {}).get("create_rate") or {}
        per_second = float(rate.get("per_second", 0) or 0)
        if per_second <= 0:
            return None
        return cls(per_second, int(rate.get("burst", 1) or 1))

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, account: str) -> float:
        """Take one token of ``account``: 0.0 when granted, else the seconds until one is free."""
        now = self._clock()
        tokens, updated = self._buckets.pop(account, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - updated) * self.per_second)
        granted = tokens >= 1.0
        if granted:
            tokens -= 1.0
        self._buckets[account] = (tokens, now)
        while len(self._buckets) > self.max_accounts:
            self._buckets.popitem(last=False)
        return 0.0 if granted else (1.0 - tokens) / self.per_second
