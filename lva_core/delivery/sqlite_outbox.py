"""The outbox in the single core's SQLite stream store (its ``outbox`` table, schema 2).

Everything runs on the store's one writer thread, after the writes queued before it, so the
event loop never waits for the disk and appends keep their order. An append commits with
``synchronous=NORMAL``, as a worker's status does: it survives a kill of the core (the WAL is
written before the commit returns), only a power loss can take the last few.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TypeVar

from lva_core.delivery.outbox import Entry, Lane, Pending
from lva_core.streams.store.base import StoreError
from lva_core.streams.store.sqlite import SqliteStreamStore

log = logging.getLogger("lva_core.delivery")

T = TypeVar("T")

_LANE = "stream_id = ? AND callback = ?"


class SqliteOutbox:
    def __init__(self, store: SqliteStreamStore) -> None:
        self.store = store
        self._closed = False

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await asyncio.wrap_future(self.store.on_writer(fn))
        except sqlite3.Error as exc:
            raise StoreError(f"the outbox failed: {exc}") from exc

    def append(self, entry: Entry, max_count: int) -> Awaitable[int]:
        lane = entry.lane

        def write(db: sqlite3.Connection) -> int:
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN")  # one transaction: the entry and the trim that keeps the bound
            try:
                db.execute(
                    "INSERT INTO outbox (stream_id, callback, event_id, body, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (lane.stream_id, lane.callback, entry.event_id, entry.body, entry.created),
                )
                (count,) = db.execute(
                    f"SELECT count(*) FROM outbox WHERE {_LANE}", (lane.stream_id, lane.callback)
                ).fetchone()
                excess = max(0, int(count) - max_count)
                if excess:
                    db.execute(
                        f"DELETE FROM outbox WHERE seq IN "
                        f"(SELECT seq FROM outbox WHERE {_LANE} ORDER BY seq LIMIT ?)",
                        (lane.stream_id, lane.callback, excess),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return excess

        try:
            # Submitted now, in call order: the writer thread keeps it.
            submitted = None if self._closed else self.store.on_writer(write)
        except StoreError:
            submitted = None
        if submitted is None:
            log.error("event %s not queued for %s: the outbox is closed", entry.event_id, lane.callback)
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            done.set_result(-1)
            return done
        return _resolved(asyncio.wrap_future(submitted), entry)

    async def pending(self, lane: Lane, after: int, limit: int) -> list[Pending]:
        def read(db: sqlite3.Connection) -> list[Pending]:
            rows = db.execute(
                f"SELECT seq, event_id, body, created FROM outbox "
                f"WHERE {_LANE} AND seq > ? ORDER BY seq LIMIT ?",
                (lane.stream_id, lane.callback, after, limit),
            ).fetchall()
            return [Pending(int(r[0]), str(r[1]), bytes(r[2]), float(r[3])) for r in rows]

        return await self._run(read)

    async def ack(self, lane: Lane, seq: int) -> None:
        await self._run(lambda db: db.execute("DELETE FROM outbox WHERE seq = ?", (seq,)))

    async def expire(self, lane: Lane, before: float) -> int:
        def delete(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                f"DELETE FROM outbox WHERE {_LANE} AND created < ?", (lane.stream_id, lane.callback, before)
            )
            return int(cursor.rowcount)

        return await self._run(delete)

    async def lanes(self) -> dict[Lane, int]:
        def read(db: sqlite3.Connection) -> dict[Lane, int]:
            rows = db.execute(
                "SELECT stream_id, callback, count(*) FROM outbox GROUP BY stream_id, callback"
            ).fetchall()
            return {Lane(str(r[0]), str(r[1])): int(r[2]) for r in rows}

        return await self._run(read)

    async def forget(self, stream_id: str) -> int:
        return await self._run(
            lambda db: int(db.execute("DELETE FROM outbox WHERE stream_id = ?", (stream_id,)).rowcount)
        )

    async def claim(self, lane: Lane) -> bool:
        return True  # one core on its own file delivers every lane

    async def release(self, lane: Lane) -> None:
        return None

    async def close(self) -> None:
        self._closed = True


async def _resolved(written: Awaitable[int], entry: Entry) -> int:
    try:
        return await written
    except (sqlite3.Error, StoreError) as exc:
        log.error("event %s not queued for %s: %s", entry.event_id, entry.lane.callback, exc)
        return -1
