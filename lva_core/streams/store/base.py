"""The stream store's contract: what the registry needs from any store.

Every implementation passes the same contract suite (``tests/unit/test_store_contract.py``).
The registry keeps the live records in memory; a store makes what the user created (and the
status it reached) survive a restart of the core.
"""

from __future__ import annotations

from typing import Protocol

from lva_core.streams.record import StreamRecord


class StoreError(Exception):
    """The store cannot be used. At start-up the core reports it and exits."""


class StreamStore(Protocol):
    @property
    def persistent(self) -> bool:
        """False for a store that forgets everything when the core stops."""
        ...

    @property
    def location(self) -> str:
        """Where the streams are kept, for logs (never with credentials)."""
        ...

    def load(self) -> list[StreamRecord]:
        """Every stored stream, in creation order, at start-up. A row that cannot be read is a
        StoreError: a damaged stream must stop start-up, never vanish silently."""
        ...

    async def insert(self, record: StreamRecord) -> None:
        """Store a new stream; durable when this returns (the API answers after it)."""
        ...

    async def save_status(self, record: StreamRecord) -> None:
        """A status the user asked for (pause, resume); durable when this returns."""
        ...

    def note_status(self, record: StreamRecord) -> None:
        """A status a worker reached: queued and written in order, never raises, never waits."""
        ...

    async def delete(self, stream_id: str) -> None:
        """Forget a stream; durable when this returns."""
        ...

    async def close(self) -> None:
        """Finish the queued writes, then release the store; idempotent."""
        ...
