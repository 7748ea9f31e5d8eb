"""The durable outbox's contract: what delivery needs from the stream store.

Every event for a callback is appended here before anyone tries to deliver it, and removed
(``ack``) only once its receiver accepted it, so a receiver that is down, or a core that is
killed, loses nothing that was appended. A *lane* is one callback of one stream
(``stream_id``, ``callback``: the callback's path, ``analytics[0].parameters.callbacks[1]``);
within a lane entries keep the order they were appended in (``seq`` grows).

Implementations: ``sqlite_outbox.py`` (the single core's store) and ``postgres_outbox.py``
(the fleet's shared store, where ``claim`` keeps one agent at a time delivering a lane).
Both pass ``tests/unit/test_outbox_contract.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Lane:
    """One callback of one stream: the unit of ordering, bounds and statistics."""

    stream_id: str
    callback: str  # the callback's path in the stream: analytics[i].parameters.callbacks[j]


@dataclass(frozen=True)
class Entry:
    """An event on its way out, as appended."""

    lane: Lane
    event_id: str  # the receiver's idempotency key
    body: bytes  # the envelope, serialised once
    created: float  # time.time() when the event was appended


@dataclass(frozen=True)
class Pending:
    """An appended event not yet delivered."""

    seq: int
    event_id: str
    body: bytes
    created: float


class Outbox(Protocol):
    def append(self, entry: Entry, max_count: int) -> Awaitable[int]:
        """Queue ``entry``; appends are written in call order, so call this from one place.

        Never raises and never blocks the caller: the awaitable resolves once the entry is
        durable (it survives a kill of the process) with the number of the lane's OLDEST
        entries removed to keep it at ``max_count``. A failed write resolves to -1, logged.
        """
        ...

    async def pending(self, lane: Lane, after: int, limit: int) -> list[Pending]:
        """Up to ``limit`` entries of ``lane`` with ``seq > after``, oldest first."""
        ...

    async def ack(self, lane: Lane, seq: int) -> None:
        """Remove one delivered entry (gone already: nothing happens)."""
        ...

    async def expire(self, lane: Lane, before: float) -> int:
        """Remove the lane's entries created before ``before``; how many went."""
        ...

    async def lanes(self) -> dict[Lane, int]:
        """Every lane that holds entries, with how many (start-up, and the fleet's scans)."""
        ...

    async def forget(self, stream_id: str) -> int:
        """Remove every entry of a stream (deleted); how many went."""
        ...

    async def claim(self, lane: Lane) -> bool:
        """Whether this process may deliver ``lane`` now. A single core always may; in a
        fleet one agent at a time holds a lane, until it releases it or its session ends."""
        ...

    async def release(self, lane: Lane) -> None:
        """Give a claimed lane back (the stream was deleted or went elsewhere)."""
        ...

    async def close(self) -> None:
        """Finish queued appends; idempotent. The store itself is closed by its owner."""
        ...
