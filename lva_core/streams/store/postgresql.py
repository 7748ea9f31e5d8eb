"""The PostgreSQL stream store: the streams in a database that an operator already runs and backs up.

Selected with ``streams.store: postgresql://user:password@host:5432/database``. It keeps what the
SQLite store keeps, in the same shapes (settings as the contract's proto messages in wire
format, the validated analytics as JSON), and passes the same contract suite.

**Schema versions.** ``lva_schema`` holds the version; ``MIGRATIONS[n]`` turns version n into
n + 1. They run at start-up in one transaction under an advisory lock, so that agents starting
together migrate once; an agent meeting a newer schema than it knows refuses to start.

**A fleet's store.** Every agent of a fleet opens the same database. Besides the contract, the
store gives the fleet (lva_core/fleet/) what it needs: reads of one stream or a page of them
with their owner, claims and the owned list on a connection of their own (``_reads``), a
worker's status write fenced by its owner and generation (a write that changes no row calls
``on_lost``), and a ``NOTIFY lva_streams`` with the stream's id in the transaction of every
user's change (create, pause, resume, delete), which a ``LISTEN`` connection hands to
``on_change``: low-rate wake-ups, never events.

**The outbox.** Schema 5's ``outbox`` table holds the outbound events on their way to their
callbacks (lva_core/delivery/postgres_outbox.py), which works on this store's loop (``loop``,
``connect``) with connections of its own, and is finished when the store closes (``on_close``).

**Threading.** asyncpg runs on an event loop of its own, in a thread of its own: the database's
latency never waits on the core's loop (frames, batching, the API), and the registry's
synchronous ``load()`` at start-up works like SQLite's. Writes go through one queue, on one
connection, in order. What a user asked for is committed before the API answers; status
changes of the workers are committed with ``synchronous_commit = off``, the same two speeds
as SQLite's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from lva_common.config import mask_url
from lva_core.fleet import claims
from lva_core.runtime.background_loop import BackgroundLoop
from lva_core.streams.record import Ownership, StreamRecord
from lva_core.streams.state import Status
from lva_core.streams.store.base import StoreError
from lva_core.streams.store.rows import COLUMNS, from_row, to_row

log = logging.getLogger("lva_core.streams.store")

T = TypeVar("T")

SCHEMA_VERSION = 5
# Taken for the migration's transaction only: agents starting together migrate once.
MIGRATION_LOCK = 0x4C56_414D_4947_5231  # "LVAMIGR1"

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS lva_schema (
    id integer PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
)
"""
# MIGRATIONS[n] turns a version-n database into version n + 1.
MIGRATIONS: dict[int, list[str]] = {
    0: [
        """
        CREATE TABLE streams (
            position bigserial NOT NULL,       -- creation order
            stream_id text PRIMARY KEY,
            account_id text NOT NULL,
            name text NOT NULL,
            description text NOT NULL,
            data bytea NOT NULL,               -- lva.v1.StreamData, wire format
            analytics jsonb NOT NULL,          -- [{"name": ..., "parameters": {...}}], as validated
            autorestart bytea NOT NULL,        -- lva.v1.Autorestart, wire format
            status text NOT NULL,
            error text,
            create_time double precision NOT NULL,
            last_update_time double precision NOT NULL
        )
        """,
        "CREATE INDEX streams_account ON streams (account_id)",
    ],
    # The fleet's agents (lva_core/fleet): one row per agent_id, its lease on the server's clock.
    1: [
        # Every start of an agent takes the next number: the fencing token of that incarnation.
        "CREATE SEQUENCE agent_incarnations",
        """
        CREATE TABLE agents (
            agent_id text PRIMARY KEY,
            incarnation bigint NOT NULL,
            endpoint text NOT NULL,
            capacity integer NOT NULL,
            analytics text[] NOT NULL,
            labels jsonb NOT NULL,
            status text NOT NULL,              -- alive, draining, stopped; lost is derived
            stream_count integer NOT NULL,
            started_at timestamptz NOT NULL,
            renewed_at timestamptz NOT NULL,
            lease_expires timestamptz NOT NULL
        )
        """,
    ],
    # Ownership of streams by agents (lva_core/fleet/claims.py): who runs a stream, fenced by
    # the incarnation; and the analytics' names, which an agent must all have to claim it.
    2: [
        """
        ALTER TABLE streams
            ADD COLUMN owner_id text,
            ADD COLUMN owner_incarnation bigint,
            ADD COLUMN analytic_names text[] NOT NULL DEFAULT '{}'
        """,
        """
        UPDATE streams SET analytic_names =
            ARRAY(SELECT DISTINCT a->>'name' FROM jsonb_array_elements(analytics) a ORDER BY 1)
        """,
        "CREATE INDEX streams_owner ON streams (owner_id, owner_incarnation)",
    ],
    # The user's generation of a stream: raised by every pause, resume and retry from any core,
    # named by its owner's status writes, which then change nothing (fleet/claims.py).
    3: ["ALTER TABLE streams ADD COLUMN generation bigint NOT NULL DEFAULT 0"],
    # The outbox of outbound events (lva_core/delivery/postgres_outbox.py): one row per event and
    # callback until its receiver accepted it; a lane is (stream_id, callback), ordered by seq.
    4: [
        """
        CREATE TABLE outbox (
            seq bigserial PRIMARY KEY,
            stream_id text NOT NULL,
            callback text NOT NULL,            -- the callback's path: analytics[i].parameters.callbacks[j]
            event_id text NOT NULL,
            body bytea NOT NULL,               -- the envelope as sent
            created double precision NOT NULL
        )
        """,
        "CREATE INDEX outbox_lane ON outbox (stream_id, callback, seq)",
    ],
}
# The channel of the user's changes; the payload is the stream's id.
CHANNEL = "lva_streams"

# What a dead connection raises: the server went away (restart, crash) or the network did.
# InternalClientError too: a connection the server ended while it was idle can be left waiting
# for the end of that error ("cannot switch to state 12; another operation (2) is in
# progress"), and only a new connection helps.
_CONNECTION_LOST = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    OSError,
)

_INSERT = (
    f"INSERT INTO streams ({COLUMNS}, analytic_names) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
)
# What the user asked for, from any core: a stream paused (or ended) has no owner any more, so
# its owner's next fenced write fails and its worker stops; one resumed stays unowned, claimable.
# The owner is kept: while it lives it stops the stream's worker (a pause) or starts it again (a
# resume, a retry) when the notification or its next round shows the new generation; nobody
# else may claim a stream whose owner lives, so the camera never has two readers. Once the
# owner is dead, a resumed stream is claimable by any agent.
_SAVE_STATUS = """
UPDATE streams SET status = $1, error = $2, last_update_time = $3, generation = generation + 1
WHERE stream_id = $4
"""
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', $1)"
_UPDATE_STATUS = "UPDATE streams SET status = $1, error = $2, last_update_time = $3 WHERE stream_id = $4"
# A worker's status in a fleet: only while its incarnation owns the stream at its generation.
_FENCED_STATUS = claims.WRITE_STATUS
# A stream with its owner: whether that owner's lease is alive, and where it answers.
_SELECT = f"""
SELECT {", ".join("s." + c.strip() for c in COLUMNS.split(","))},
       s.owner_id, s.owner_incarnation, s.generation, a.endpoint AS owner_endpoint,
       (a.agent_id IS NOT NULL) AS owner_alive
FROM streams s
LEFT JOIN agents a ON a.agent_id = s.owner_id AND a.incarnation = s.owner_incarnation
    AND a.status IN ('alive', 'draining') AND a.lease_expires > now()
"""


@dataclass(frozen=True)
class StoredStream:
    """A stream as the shared store holds it, with its owner's liveness and endpoint."""

    record: StreamRecord  # record.owner: the stored owner and generation, alive or not
    owner_alive: bool
    owner_endpoint: str


@dataclass(frozen=True)
class OwnedStream:
    stream_id: str
    status: Status
    generation: int


@dataclass
class _Write:
    statements: list[tuple[str, tuple[Any, ...]]]
    durable: bool
    done: Future[None] | None
    fenced: str | None = None  # a worker's fenced write of this stream: 0 rows calls on_lost


def _stored(row: Any) -> StoredStream:
    record = from_row(row)
    if row["owner_id"] is not None:
        record.owner = Ownership(row["owner_id"], int(row["owner_incarnation"]), int(row["generation"]))
    else:
        record.owner = Ownership("", 0, int(row["generation"]))
    return StoredStream(record, bool(row["owner_alive"]), row["owner_endpoint"] or "")


class PostgresStreamStore:
    """One database; open it, load() once, then write through the async methods."""

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        self.url = url
        self._location = mask_url(url)
        self._connect_timeout = connect_timeout
        self._closed = False
        self._background = BackgroundLoop("stream-store")
        self._db: asyncpg.Connection | None = None
        self._reads: asyncpg.Connection | None = None
        self._reads_lock: asyncio.Lock
        self._listener: asyncio.Task[None] | None = None
        self._writes: asyncio.Queue[_Write | None]
        self._writer: asyncio.Task[None] | None = None
        # Set by the fleet; called on the store's thread (they must be thread-safe).
        self.on_lost: Callable[[str], object] = lambda stream_id: None
        self.on_change: Callable[[str], object] = lambda stream_id: None
        # Run on the store's loop when it closes, before its own writes finish (on_close).
        self._closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        try:
            self._call(self._open())
        except BaseException:
            self._call(self._disconnect())
            self._background.stop()
            raise

    # ------------------------------------------------------------------ the store's own loop

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Start-up and tests: run on the store's loop and wait."""
        return self._background.call(coroutine)

    def _explain(self, exc: BaseException) -> str:
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            why = "the database does not exist"
        elif isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
            why = "the server refused the credentials"
        elif isinstance(exc, OSError | asyncio.TimeoutError):
            why = "the server cannot be reached"
        else:
            why = type(exc).__name__
        text = str(exc) or type(exc).__name__
        return f"cannot use the stream store {self._location}: {text} ({why})"

    async def _connect(self) -> asyncpg.Connection:
        """A new connection; StoreError when none can be had."""
        try:
            return await asyncpg.connect(self.url, timeout=self._connect_timeout)
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ValueError) as exc:
            # ValueError: a URL asyncpg cannot parse. Never the URL itself: it may hold a password.
            raise StoreError(self._explain(exc)) from None

    async def _open(self) -> None:
        self._db = await self._connect()
        try:
            await self._migrate(self._db)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(self._explain(exc)) from None
        self._reads_lock = asyncio.Lock()
        self._writes = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_in_order())

    async def _execute(self, write: _Write) -> str:
        """Statements in one transaction; the last one's status. A lost connection (a server
        restart, a network cut) is replaced once and the write retried, so that one blip costs
        no write."""
        for attempt in (1, 2):
            try:
                if self._db is None or self._db.is_closed():
                    self._db = await self._connect()
                    log.warning("stream store %s: reconnected", self._location)
                result = ""
                async with self._db.transaction():
                    if not write.durable:
                        # A worker's status: a crash of the server may lose the last few.
                        await self._db.execute("SET LOCAL synchronous_commit = off")
                    for sql, params in write.statements:
                        result = await self._db.execute(sql, *params)
                return result
            except _CONNECTION_LOST:
                if attempt == 2:
                    raise
                if self._db is not None:
                    self._db.terminate()
                self._db = None
        raise AssertionError("unreachable")

    async def _migrate(self, db: asyncpg.Connection) -> None:
        async with db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await db.execute(_CREATE_VERSION_TABLE)
            stored = await db.fetchval("SELECT version FROM lva_schema WHERE id = 1")
            version = int(stored) if stored is not None else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the stream store {self._location} has schema version {version}, written by a "
                    f"newer agent; this one reads up to version {SCHEMA_VERSION}"
                )
            start = version
            while version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version]:
                    await db.execute(statement)
                version += 1
            await db.execute(
                "INSERT INTO lva_schema (id, version) VALUES (1, $1) "
                "ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
                version,
            )
        if version != start:
            log.info("stream store %s: schema %d -> %d", self._location, start, version)

    async def _disconnect(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        for db in (self._db, self._reads):
            if db is not None and not db.is_closed():
                try:
                    await db.close(timeout=5)
                except (*_CONNECTION_LOST, TimeoutError):
                    db.terminate()

    async def _write_in_order(self) -> None:
        """The one writer: each queued write in turn, on the one connection."""
        while (write := await self._writes.get()) is not None:
            try:
                result = await self._execute(write)
            except Exception as exc:
                error = exc if isinstance(exc, StoreError) else StoreError(self._explain(exc))
                if write.done is not None:
                    write.done.set_exception(error)
                else:
                    log.error("stream status not saved: %s", error)
            else:
                if write.done is not None:
                    write.done.set_result(None)
                if write.fenced is not None and result.endswith(" 0"):
                    self.on_lost(write.fenced)

    # ------------------------------------------------------------------ the contract

    @property
    def persistent(self) -> bool:
        return True

    @property
    def location(self) -> str:
        return self._location

    def schema_version(self) -> int:
        async def read() -> int:
            assert self._db is not None
            return int(await self._db.fetchval("SELECT version FROM lva_schema WHERE id = 1"))

        return self._call(read())

    def load(self) -> list[StreamRecord]:
        """Every stored stream, in creation order. A row that cannot be read is a StoreError."""

        async def read() -> list[StreamRecord]:
            assert self._db is not None
            try:
                rows = await self._db.fetch(f"SELECT {COLUMNS} FROM streams ORDER BY position")
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise StoreError(self._explain(exc)) from None
            records = []
            for row in rows:
                try:
                    records.append(from_row(row))
                except Exception as exc:  # a damaged row must stop start-up, never vanish silently
                    raise StoreError(
                        f"the stream store {self._location} holds an unreadable stream "
                        f"{row['stream_id']}: {exc}"
                    ) from exc
            return records

        return self._call(read())

    def _enqueue(self, write: _Write) -> None:
        self._background.call_soon(self._writes.put_nowait, write)

    async def _durable(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        if self._closed:
            raise StoreError("the stream store is closed")
        done: Future[None] = Future()
        self._enqueue(_Write(list(statements), True, done))
        await asyncio.wrap_future(done)

    async def insert(self, record: StreamRecord) -> None:
        """Store a new stream; committed when this returns; the fleet is told."""
        row = (*to_row(record), sorted({s.name for s in record.analytics}))
        await self._durable((_INSERT, row), (_NOTIFY, (record.stream_id,)))

    async def save_status(self, record: StreamRecord) -> None:
        """A status the user asked for (pause, resume), from any core: a new generation of the
        stream, committed when this returns; its owner is told."""
        await self._durable((_SAVE_STATUS, self._status(record)), (_NOTIFY, (record.stream_id,)))

    def note_status(self, record: StreamRecord) -> None:
        """A status the worker reached: queued, committed in order, not waited for. Never raises.

        In a fleet (``record.owner`` names an agent) the write is fenced: once the stream was
        taken over or changed by the user it changes nothing, and ``on_lost`` is called."""
        if self._closed:
            return
        owner = record.owner
        if owner is None or not owner.agent_id:
            self._enqueue(_Write([(_UPDATE_STATUS, self._status(record))], False, None))
            return
        params = (*self._status(record), owner.agent_id, owner.incarnation, owner.generation)
        self._enqueue(_Write([(_FENCED_STATUS, params)], False, None, record.stream_id))

    @staticmethod
    def _status(record: StreamRecord) -> tuple[Any, ...]:
        return (record.status.value, record.error, record.last_update_time, record.stream_id)

    async def delete(self, stream_id: str) -> None:
        """Forget a stream; committed when this returns; its owner is told."""
        await self._durable(
            ("DELETE FROM streams WHERE stream_id = $1", (stream_id,)), (_NOTIFY, (stream_id,))
        )

    async def close(self) -> None:
        """Finish the queued writes, then disconnect; idempotent."""
        if self._closed:
            return
        self._closed = True

        async def finish() -> None:
            for closer in self._closers:
                try:
                    await closer()
                except Exception as exc:
                    log.error("closing the stream store %s: %s", self._location, exc)
            self._writes.put_nowait(None)
            if self._writer is not None:
                await self._writer
            await self._disconnect()

        try:
            await self._background.run(finish())
        except Exception as exc:
            log.error("closing the stream store %s: %s", self._location, exc)
        await asyncio.get_running_loop().run_in_executor(None, self._background.stop)
        log.info("stream store %s closed", self._location)

    # ------------------------------------------------------------------ for the outbox

    # The outbox (lva_core/delivery/postgres_outbox.py) keeps its connections on this loop, as
    # the store does, so that the database's latency never waits on the core's loop.

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The store's own event loop (in its own thread): where its connections are used."""
        return self._background.loop

    @property
    def closed(self) -> bool:
        return self._closed

    async def connect(self) -> asyncpg.Connection:
        """A new connection to the store's database, on the store's loop; StoreError when none
        can be had (its message never holds the password)."""
        return await self._connect()

    def on_close(self, finish: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Have ``finish()`` run on the store's loop when the store closes, before its own queued
        writes finish and it disconnects: what lives on the loop is finished, not dropped."""
        self._closers.append(finish)

    # ------------------------------------------------------------------ the fleet's reads and claims

    async def _read(self, work: Callable[[asyncpg.Connection], Coroutine[Any, Any, T]]) -> T:
        """On the reads' connection, replaced once when it was lost; StoreError otherwise."""

        async def attempt() -> T:
            async with self._reads_lock:
                for tries in (1, 2):
                    try:
                        if self._reads is None or self._reads.is_closed():
                            self._reads = await self._connect()
                        return await work(self._reads)
                    except _CONNECTION_LOST as exc:
                        if self._reads is not None:
                            self._reads.terminate()
                        self._reads = None
                        if tries == 2:
                            raise StoreError(self._explain(exc)) from None
                    except asyncpg.PostgresError as exc:
                        raise StoreError(self._explain(exc)) from None
                raise AssertionError("unreachable")

        if self._closed:
            raise StoreError("the stream store is closed")
        return await self._background.run(attempt())

    async def fetch(self, stream_id: str) -> StoredStream | None:
        async def work(db: asyncpg.Connection) -> StoredStream | None:
            row = await db.fetchrow(_SELECT + " WHERE s.stream_id = $1", stream_id, timeout=5)
            return None if row is None else _stored(row)

        return await self._read(work)

    async def fetch_many(self, stream_ids: Sequence[str]) -> list[StoredStream]:
        async def work(db: asyncpg.Connection) -> list[StoredStream]:
            rows = await db.fetch(
                _SELECT + " WHERE s.stream_id = ANY($1) ORDER BY s.position", list(stream_ids)
            )
            return [_stored(row) for row in rows]

        return await self._read(work)

    async def fetch_page(
        self, account_id: str, status: Status | None, offset: int, limit: int
    ) -> tuple[list[StoredStream], int]:
        """One page in creation order, and how many match in all."""
        where = "WHERE ($1 = '' OR s.account_id = $1) AND ($2::text IS NULL OR s.status = $2)"

        async def work(db: asyncpg.Connection) -> tuple[list[StoredStream], int]:
            value = None if status is None else status.value
            async with db.transaction(isolation="repeatable_read", readonly=True):
                count = await db.fetchval(f"SELECT count(*) FROM streams s {where}", account_id, value)
                rows = await db.fetch(
                    f"{_SELECT} {where} ORDER BY s.position OFFSET $3 LIMIT $4",
                    account_id,
                    value,
                    offset,
                    limit,
                )
            return [_stored(row) for row in rows], int(count)

        return await self._read(work)

    async def claim(
        self, agent_id: str, incarnation: int, now: float, limit: int
    ) -> list[tuple[str, str | None]]:
        """Up to ``limit`` streams claimed, each with its previous owner (claims.py)."""

        async def work(db: asyncpg.Connection) -> list[tuple[str, str | None]]:
            return await claims.claim_taking_over(db, agent_id, incarnation, now, limit)

        return await self._read(work)

    async def nudge(self) -> None:
        """Wake every agent's round: streams were claimed or given back."""

        async def work(db: asyncpg.Connection) -> None:
            await db.execute(_NOTIFY, "", timeout=5)

        await self._read(work)

    async def owned(self, agent_id: str, incarnation: int) -> list[OwnedStream]:
        async def work(db: asyncpg.Connection) -> list[OwnedStream]:
            rows = await db.fetch(claims.OWNED_STATE, agent_id, incarnation, timeout=5)
            return [OwnedStream(r["stream_id"], Status(r["status"]), int(r["generation"])) for r in rows]

        return await self._read(work)

    async def release(self, agent_id: str, incarnation: int, stream_ids: Sequence[str] | None = None) -> int:
        """Give streams back (all of this incarnation's when ``stream_ids`` is None)."""

        async def work(db: asyncpg.Connection) -> int:
            if stream_ids is None:
                return await claims.release(db, agent_id, incarnation)
            result = await db.execute(claims.RELEASE_SOME, agent_id, incarnation, list(stream_ids))
            return int(result.rsplit(" ", 1)[1])

        return await self._read(work)

    def listen(self) -> None:
        """Start handing the user's changes to ``on_change``, reconnecting when the link drops."""
        self._background.call_soon(self._start_listener)

    def _start_listener(self) -> None:
        if self._listener is None and not self._closed:
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        def notified(_db: Any, _pid: int, _channel: str, payload: object) -> None:
            self.on_change(str(payload))

        while not self._closed:
            db: asyncpg.Connection | None = None
            try:
                db = await asyncpg.connect(self.url, timeout=self._connect_timeout)
                await db.add_listener(CHANNEL, notified)
                self.on_change("")  # anything may have changed while no one listened
                while not db.is_closed():
                    await asyncio.sleep(1.0)
                    await db.execute("SELECT 1", timeout=5)  # notices a dead link
            except asyncio.CancelledError:
                if db is not None:
                    db.terminate()
                raise
            except (*_CONNECTION_LOST, TimeoutError, asyncpg.PostgresError) as exc:
                log.warning("stream store %s: listening stopped (%s); again in 1 s", self._location, exc)
            if db is not None:
                db.terminate()
            await asyncio.sleep(1.0)
