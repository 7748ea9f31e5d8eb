"""The outbox in the fleet's PostgreSQL stream store (its ``outbox`` table, schema 5).

**Threading.** Like the store, the outbox works on the store's own event loop (``store.loop``),
with connections of its own opened there (``store.connect``): the database's latency never
waits on the core's loop. Callers are on the core's loop; each call crosses over with
``asyncio.run_coroutine_threadsafe`` and is awaited with ``asyncio.wrap_future``. When the store
closes first, it closes the outbox before its own connections (``store.on_close``).

**Appends.** One writer of the outbox's own, on a connection of its own, writes the queued
appends in call order, what is queued at a time in one transaction: a run of appends in one
insert, then each of their lanes trimmed once to its ``max_count``, the oldest first. Each
append resolves, once that committed (durable as the database's commits are), with what it
pushed out, as if they had been written one at a time. ``forget`` is queued with them, so the
appends issued before it are forgotten too. The schema keeps no counts: a trim walks the lane's
newest ``max_count`` entries in its index (a few ms for 10,000), once per lane and transaction.

While the database cannot be reached the appends wait, ``max_queued`` of them at most, and are
written in order once it is back (a ``forget`` waits with them); one more is refused at once
(-1, logged). A batch whose
commit was cut before its answer came is written again: a duplicate, which delivery allows (at
least once; the event_id is the receiver's idempotency key). ``close()`` waits
``close_timeout`` for the queued appends; those still unwritten then resolve -1, logged.

**Reads and acks** (``pending``, ``ack``, ``expire``, ``lanes``) run on a second connection, with
``synchronous_commit = off``: an ack lost in a crash of the server makes a redelivery, never a
loss. A failure is a StoreError, as with the SQLite outbox.

**Claims.** In a fleet one agent at a time delivers a lane: ``claim`` takes a session-level
``pg_try_advisory_lock`` of two keys derived from the lane (``lane_keys``) on a third
connection, which holds nothing else, so an agent that dies (or is cut off: TCP keepalives)
releases its lanes with its session. A lane this outbox holds already is True again while that
session answers (a round trip: claim once per round of a lane, not per event). When it is lost
(a server restart, a network cut, ``pg_terminate_backend``) every claim it held is lost with it:
``claim`` then takes each lane again, and answers False for those another agent took meanwhile.

*What that means for delivery:* between the loss of a session and its next ``claim`` an agent
may still be sending a lane that another agent has just taken, so after a database restart a
lane may briefly be delivered by two agents. Events are delivered at least once; duplicates
are allowed, and the event_id is the idempotency key. An agent should call ``claim`` before each
round of a lane's deliveries and, having (re)taken a lane, read its pending entries from the
start (``after=0``): entries appended by two agents at once (a takeover) may commit out of
``seq`` order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from lva_common.aio import wait_within
from lva_core.delivery.outbox import Entry, Lane, Pending
from lva_core.streams.store.base import StoreError
from lva_core.streams.store.postgresql import PostgresStreamStore

log = logging.getLogger("lva_core.delivery")

T = TypeVar("T")

_LANE = "stream_id = $1 AND callback = $2"
# A lane's entries as a range of its index (stream_id, callback, seq), its rows compared rather
# than its columns: with "stream_id = $1 AND callback = $2" the planner takes "ORDER BY
# stream_id, callback, seq" for "ORDER BY seq", which the primary key gives too, and a generic
# plan (asyncpg's statements are prepared) may then walk the whole table in seq order.
_FIRST = "(stream_id, callback, seq) >= ($1, $2, (-9223372036854775808)::bigint)"
_LAST = "(stream_id, callback, seq) <= ($1, $2, 9223372036854775807::bigint)"
# A run of appends in one statement, seq growing in call order.
_INSERT = """
INSERT INTO outbox (stream_id, callback, event_id, body, created)
SELECT stream_id, callback, event_id, body, created
FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::float8[])
    WITH ORDINALITY AS e(stream_id, callback, event_id, body, created, position)
ORDER BY position
"""
# The lane ($1, $2) cut to its newest $3 entries: all up to the newest one beyond them go.
_TRIM = f"""
DELETE FROM outbox WHERE {_FIRST} AND (stream_id, callback, seq) <= ($1, $2, (
    SELECT seq FROM outbox WHERE {_FIRST} AND {_LAST}
    ORDER BY stream_id DESC, callback DESC, seq DESC OFFSET $3 LIMIT 1
))
"""
_FORGET = "DELETE FROM outbox WHERE stream_id = $1"
_PENDING = f"""
SELECT seq, event_id, body, created FROM outbox
WHERE (stream_id, callback, seq) > ($1, $2, $3) AND {_LAST}
ORDER BY stream_id, callback, seq LIMIT $4
"""
_ACK = f"DELETE FROM outbox WHERE {_LANE} AND seq = $3"
_EXPIRE = f"DELETE FROM outbox WHERE {_FIRST} AND {_LAST} AND created < $3"
_LANES = "SELECT stream_id, callback, count(*) AS n FROM outbox GROUP BY stream_id, callback"
_TRY_LOCK = "SELECT pg_try_advisory_lock($1, $2)"
_UNLOCK = "SELECT pg_advisory_unlock($1, $2)"
# A claims connection that the network lost is noticed by the server in about 25 s, which then
# ends its session, and with it the claims: another agent may take the lanes.
_KEEPALIVES = "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3"

# What says the database cannot be reached now (rather than that the write is wrong): the
# connection went (08), the server is shutting down or starting (57), it is out of connections
# or disk (53), or it is a standby in a failover (25006). StoreError: store.connect found none.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    StoreError,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.ReadOnlySQLTransactionError,
)

BATCH = 256  # appends written in one transaction at most
STATEMENT_TIMEOUT = 30.0  # seconds a statement may take before its connection is given up
CLAIM_TIMEOUT = 5.0


def lane_keys(lane: Lane) -> tuple[int, int]:
    """The two int4 keys of the lane's advisory lock (a stable hash of stream and callback)."""
    digest = hashlib.blake2b(
        f"{lane.stream_id}\0{lane.callback}".encode(), digest_size=8, person=b"lva-outbox"
    ).digest()
    first, second = struct.unpack(">ii", digest)
    return int(first), int(second)


@dataclass
class _Job:
    """One queued write: an append (``entry``) or a forget (``stream_id``)."""

    done: Future[int]
    entry: Entry | None = None
    max_count: int = 0
    stream_id: str = ""
    resolved: bool = False


def _settle(done: Future[int], value: int | BaseException) -> None:
    # The caller may have cancelled its awaitable (from its own thread): nothing to tell then.
    with contextlib.suppress(InvalidStateError):
        if not done.done():
            if isinstance(value, BaseException):
                done.set_exception(value)
            else:
                done.set_result(value)


def _runs(batch: list[_Job]) -> Iterator[int | list[int]]:
    """The batch in order, as runs of appends (their places) and forgets (a place each). A run
    ends where a lane comes again with another bound, so that each lane of a run has one."""
    run: list[int] = []
    bounds: dict[Lane, int] = {}
    for i, job in enumerate(batch):
        entry = job.entry
        if entry is None or bounds.get(entry.lane, job.max_count) != job.max_count:
            if run:
                yield run
            run, bounds = [], {}
        if entry is None:
            yield i
            continue
        run.append(i)
        bounds[entry.lane] = job.max_count
    if run:
        yield run


def _shares(trimmed: int, appended: int) -> list[int]:
    """What each of a lane's ``appended`` entries (in order, one bound) trimmed, as if written one
    at a time, when they trimmed ``trimmed`` in all: each one past the bound pushes out one;
    the first pushes out, besides, what was over a bound that was lowered."""
    if trimmed <= appended:
        return [0] * (appended - trimmed) + [1] * trimmed
    return [trimmed - appended + 1] + [1] * (appended - 1)


async def _shielded(coroutine: Coroutine[Any, Any, T]) -> T:
    return await asyncio.shield(coroutine)


def _count(status: str) -> int:
    """The rows of a command's status ("DELETE 3")."""
    return int(status.rsplit(" ", 1)[1])


class PostgresOutbox:
    """The outbox of one agent, on the shared store; ``close()`` it before the store."""

    def __init__(
        self, store: PostgresStreamStore, max_queued: int = 10_000, close_timeout: float = 10.0
    ) -> None:
        if store.closed:
            raise StoreError("the stream store is closed")
        if max_queued < 1:
            raise ValueError("max_queued must be >= 1")
        self.store = store
        self.max_queued = max_queued
        self.close_timeout = close_timeout
        self._closed = False  # close() was called (the caller's side)
        self._finishing = False  # the loop's side: nothing more is queued
        self._finished: asyncio.Task[None] | None = None
        # The writer's state, used on the store's loop only.
        self._queue: deque[_Job] = deque()
        self._writing: list[_Job] = []
        self._queued = 0  # appends accepted and not resolved yet: the bound
        self._refused = 0  # appends refused by the bound since that was last logged
        self._away_since: float | None = None
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._db: asyncpg.Connection | None = None
        # Reads and acks.
        self._ops: asyncpg.Connection | None = None
        self._ops_lock = asyncio.Lock()
        # Claims.
        self._claims: asyncpg.Connection | None = None
        self._claims_lock = asyncio.Lock()
        self._held: set[Lane] = set()  # every one locked by the session of self._claims
        store.loop.call_soon_threadsafe(self._start)
        store.on_close(self._finish)

    # ------------------------------------------------------------------ crossing over

    def _start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_in_order())

    async def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run on the store's loop, awaited from the caller's."""
        if self.store.closed:
            coroutine.close()
            raise StoreError("the stream store is closed")
        try:
            submitted = asyncio.run_coroutine_threadsafe(coroutine, self.store.loop)
        except RuntimeError:  # its loop is closed
            coroutine.close()
            raise StoreError("the stream store is closed") from None
        return await asyncio.wrap_future(submitted)

    def _submit(self, job: _Job) -> bool:
        """Queue ``job`` on the store's loop, behind every job submitted before it."""
        if self._closed:
            return False
        try:
            self.store.loop.call_soon_threadsafe(self._enqueue, job)
        except RuntimeError:  # the store's loop is closed
            return False
        return True

    async def _connect(self, role: str) -> asyncpg.Connection:
        db = await self.store.connect()
        try:
            await db.execute(f"SET application_name = 'lva outbox {role}'")
        except BaseException:
            db.terminate()
            raise
        return db

    @staticmethod
    async def _disconnect(db: asyncpg.Connection | None) -> None:
        if db is not None and not db.is_closed():
            try:
                await db.close(timeout=5)
            except Exception:
                db.terminate()

    # ------------------------------------------------------------------ appends and forget

    def append(self, entry: Entry, max_count: int) -> Awaitable[int]:
        done: Future[int] = Future()
        if not self._submit(_Job(done, entry, max(0, max_count))):
            log.error("event %s not queued for %s: the outbox is closed", entry.event_id, entry.lane.callback)
            done.set_result(-1)
        return asyncio.wrap_future(done)

    async def forget(self, stream_id: str) -> int:
        done: Future[int] = Future()
        if not self._submit(_Job(done, stream_id=stream_id)):
            raise StoreError("the outbox is closed")
        return await asyncio.wrap_future(done)

    def _enqueue(self, job: _Job) -> None:
        if self._finishing:
            if job.entry is not None:
                log.error(
                    "event %s not queued for %s: the outbox is closed",
                    job.entry.event_id,
                    job.entry.lane.callback,
                )
            _settle(job.done, -1 if job.entry is not None else StoreError("the outbox is closed"))
            return
        if job.entry is not None:
            if self._queued >= self.max_queued:
                self._refused += 1
                if self._refused == 1:
                    log.error(
                        "event %s not queued for %s: %d appends wait for the stream store %s (the "
                        "outbox's bound); more are refused, and counted, until they are written",
                        job.entry.event_id,
                        job.entry.lane.callback,
                        self._queued,
                        self.store.location,
                    )
                _settle(job.done, -1)
                return
            self._queued += 1
        self._queue.append(job)
        self._wake.set()

    def _resolve(self, job: _Job, value: int, why: str = "") -> None:
        """A queued job's outcome (once: a job cut short at closing may be resolved again)."""
        if job.resolved:
            return
        job.resolved = True
        if job.entry is not None:
            self._queued -= 1
            if value < 0:
                log.error("event %s not written for %s: %s", job.entry.event_id, job.entry.lane.callback, why)
            _settle(job.done, value)
        else:
            _settle(
                job.done, StoreError(f"stream {job.stream_id} not forgotten: {why}") if value < 0 else value
            )

    async def _write_in_order(self) -> None:
        """The one writer: the queued jobs, a batch at a time, in order."""
        while True:
            if not self._queue:
                if self._finishing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            self._writing = batch
            await self._write(batch)
            self._writing = []

    async def _write(self, batch: list[_Job]) -> None:
        """One transaction; while the database cannot be reached, again and again. A batch that
        the database refuses is written one job at a time, so that only the wrong one fails."""
        delay = 0.1
        while True:
            try:
                results = await self._transaction(batch)
            except Exception as exc:
                unreachable = isinstance(exc, _UNREACHABLE) or self._db is None or self._db.is_closed()
                await self._abandon(unreachable)
                if unreachable:
                    self._away(exc)
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 5.0)
                    continue
                if len(batch) > 1:
                    for job in batch:
                        await self._write([job])
                    return
                self._resolve(batch[0], -1, f"{type(exc).__name__}: {exc}")
                return
            self._back()
            for job, result in zip(batch, results, strict=True):
                self._resolve(job, result)
            return

    async def _abandon(self, unreachable: bool) -> None:
        """The failed transaction rolled back; a connection that may be dead given up."""
        if self._db is not None and not unreachable:
            try:
                await self._db.execute("ROLLBACK", timeout=5)
                return
            except Exception:
                pass
        if self._db is not None:
            self._db.terminate()  # the server rolls the transaction back
        self._db = None

    async def _transaction(self, batch: list[_Job]) -> list[int]:
        if self._db is None or self._db.is_closed():
            self._db = await self._connect("writer")
        db = self._db
        results = [0] * len(batch)
        await db.execute("BEGIN", timeout=STATEMENT_TIMEOUT)
        for run in _runs(batch):
            if isinstance(run, int):
                forget = batch[run].stream_id
                results[run] = _count(await db.execute(_FORGET, forget, timeout=STATEMENT_TIMEOUT))
            else:
                await self._append_run(db, batch, run, results)
        await db.execute("COMMIT", timeout=STATEMENT_TIMEOUT)
        return results

    @staticmethod
    async def _append_run(
        db: asyncpg.Connection, batch: list[_Job], run: list[int], results: list[int]
    ) -> None:
        """Appends (``run``: their places in ``batch``) in one insert, then every lane of theirs
        trimmed once; each append's result is what it trimmed, as if written one at a time."""
        entries = [e for e in (batch[i].entry for i in run) if e is not None]
        await db.execute(
            _INSERT,
            [e.lane.stream_id for e in entries],
            [e.lane.callback for e in entries],
            [e.event_id for e in entries],
            [e.body for e in entries],
            [e.created for e in entries],
            timeout=STATEMENT_TIMEOUT,
        )
        places: dict[Lane, list[int]] = {}
        for i, entry in zip(run, entries, strict=True):
            places.setdefault(entry.lane, []).append(i)
        for lane, appended in places.items():
            bound = batch[appended[0]].max_count  # one bound per lane in a run (_runs)
            status = await db.execute(_TRIM, lane.stream_id, lane.callback, bound, timeout=STATEMENT_TIMEOUT)
            for i, share in zip(appended, _shares(_count(status), len(appended)), strict=True):
                results[i] = share

    def _away(self, exc: BaseException) -> None:
        if self._away_since is None:
            self._away_since = time.monotonic()
            log.warning(
                "outbox: the stream store %s cannot be reached (%s); %d appends wait for it (at most %d)",
                self.store.location,
                str(exc) or type(exc).__name__,
                self._queued,
                self.max_queued,
            )

    def _back(self) -> None:
        if self._away_since is not None:
            log.warning(
                "outbox: the stream store %s is back after %.1f s; the waiting appends are written",
                self.store.location,
                time.monotonic() - self._away_since,
            )
            self._away_since = None
        if self._refused:
            log.error("outbox: %d events were refused while the appends waited (max_queued)", self._refused)
            self._refused = 0

    # ------------------------------------------------------------------ reads and acks

    async def _op(self, work: Callable[[asyncpg.Connection], Coroutine[Any, Any, T]]) -> T:
        """On the reads' connection, replaced once when it was lost; StoreError otherwise."""

        async def attempt() -> T:
            async with self._ops_lock:
                for tries in (1, 2):
                    if self._finishing:
                        raise StoreError("the outbox is closed")
                    try:
                        if self._ops is None or self._ops.is_closed():
                            self._ops = await self._connect("reads")
                            await self._ops.execute("SET synchronous_commit = off")
                        return await work(self._ops)
                    except StoreError:
                        raise
                    except Exception as exc:
                        lost = isinstance(exc, _UNREACHABLE) or self._ops is None or self._ops.is_closed()
                        if lost or isinstance(exc, TimeoutError):
                            if self._ops is not None:
                                self._ops.terminate()
                            self._ops = None
                        if not lost or tries == 2:
                            raise StoreError(f"the outbox in {self.store.location} failed: {exc}") from None
                raise AssertionError("unreachable")

        if self._closed:
            raise StoreError("the outbox is closed")
        return await self._on_loop(attempt())

    async def pending(self, lane: Lane, after: int, limit: int) -> list[Pending]:
        async def read(db: asyncpg.Connection) -> list[Pending]:
            rows = await db.fetch(
                _PENDING, lane.stream_id, lane.callback, after, max(0, limit), timeout=STATEMENT_TIMEOUT
            )
            return [
                Pending(int(r["seq"]), str(r["event_id"]), bytes(r["body"]), float(r["created"]))
                for r in rows
            ]

        return await self._op(read)

    async def ack(self, lane: Lane, seq: int) -> None:
        async def delete(db: asyncpg.Connection) -> None:
            await db.execute(_ACK, lane.stream_id, lane.callback, seq, timeout=STATEMENT_TIMEOUT)

        await self._op(delete)

    async def expire(self, lane: Lane, before: float) -> int:
        async def delete(db: asyncpg.Connection) -> int:
            return _count(
                await db.execute(_EXPIRE, lane.stream_id, lane.callback, before, timeout=STATEMENT_TIMEOUT)
            )

        return await self._op(delete)

    async def lanes(self) -> dict[Lane, int]:
        async def read(db: asyncpg.Connection) -> dict[Lane, int]:
            rows = await db.fetch(_LANES, timeout=STATEMENT_TIMEOUT)
            return {Lane(str(r["stream_id"]), str(r["callback"])): int(r["n"]) for r in rows}

        return await self._op(read)

    # ------------------------------------------------------------------ claims

    async def claim(self, lane: Lane) -> bool:
        if self._closed:
            return False
        try:
            return await self._on_loop(self._claim(lane))
        except StoreError as exc:
            log.warning("outbox: lane %s %s not claimed: %s", lane.stream_id, lane.callback, exc)
            return False

    async def _claim(self, lane: Lane) -> bool:
        # Shielded: a caller that gives up must not leave a lock taken and not counted as held.
        return await _shielded(self._take(lane))

    async def _take(self, lane: Lane) -> bool:
        async with self._claims_lock:
            if self._finishing:
                return False
            if self._claims is not None and self._claims.is_closed():
                self._lose_claims("its connection closed")
            if lane in self._held and self._claims is not None:
                # Held while its session lives: asked now, not remembered (a killed session's
                # connection may not have noticed yet).
                try:
                    await self._claims.execute("SELECT 1", timeout=CLAIM_TIMEOUT)
                except Exception as exc:
                    self._lose_claims(str(exc) or type(exc).__name__)
                else:
                    return True
            try:
                if self._claims is None:
                    self._claims = await self._connect("claims")
                    await self._claims.execute(_KEEPALIVES)
                taken = await self._claims.fetchval(_TRY_LOCK, *lane_keys(lane), timeout=CLAIM_TIMEOUT)
            except StoreError:
                raise
            except Exception as exc:
                self._lose_claims(str(exc) or type(exc).__name__)
                raise StoreError(f"the outbox in {self.store.location} failed: {exc}") from None
            if taken:
                self._held.add(lane)
            return bool(taken)

    def _lose_claims(self, why: str) -> None:
        """The claims connection is gone, and every claim it held with it."""
        if self._held:
            log.warning(
                "outbox: %d lane claims lost with their connection to %s (%s): other agents may "
                "deliver those lanes now, and some events may be sent twice",
                len(self._held),
                self.store.location,
                why,
            )
        self._held.clear()
        if self._claims is not None:
            self._claims.terminate()
        self._claims = None

    async def release(self, lane: Lane) -> None:
        async def give_back() -> None:
            async with self._claims_lock:
                if lane not in self._held:
                    return
                self._held.discard(lane)
                if self._claims is None or self._claims.is_closed():
                    return
                try:
                    await self._claims.fetchval(_UNLOCK, *lane_keys(lane), timeout=CLAIM_TIMEOUT)
                except Exception as exc:
                    self._lose_claims(str(exc) or type(exc).__name__)  # its session ends: released

        if self._closed:
            return
        try:
            await self._on_loop(_shielded(give_back()))
        except StoreError as exc:
            log.warning("outbox: lane %s %s not released: %s", lane.stream_id, lane.callback, exc)

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(StoreError):  # the store closed first: it finished the outbox
            await self._on_loop(self._finish())

    async def _finish(self) -> None:
        """On the store's loop: the queued appends written (``close_timeout`` at most), then the
        connections closed. Once, whoever asks first (close(), or the store closing)."""
        self._closed = True
        if self._finished is None:
            self._finished = asyncio.get_running_loop().create_task(self._finish_once())
        await asyncio.shield(self._finished)

    async def _finish_once(self) -> None:
        self._finishing = True
        self._wake.set()
        if self._writer is not None:
            try:
                await wait_within(asyncio.shield(self._writer), self.close_timeout)
            except TimeoutError:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer
        left = [*self._writing, *self._queue]
        self._writing, self._queue = [], deque()
        if left:
            log.error("outbox: %d queued writes not written before closing", len(left))
        for job in left:
            self._resolve(job, -1, "the outbox closed before the stream store could be reached")
        async with self._ops_lock:
            await self._disconnect(self._ops)
            self._ops = None
        async with self._claims_lock:
            self._held.clear()
            await self._disconnect(self._claims)  # its session ends: every claim released
            self._claims = None
        await self._disconnect(self._db)
        self._db = None
