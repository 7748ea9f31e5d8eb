"""The PostgreSQL stream store: the streams in a database that an operator already runs and backs up.

Selected with ``streams.store: postgresql://user:password@host:5432/database``. It keeps what the
SQLite store keeps, in the same shapes (settings as the contract's proto messages in wire
format, the validated analytics as JSON), and passes the same contract suite.

**Schema versions.** ``lva_schema`` holds the version; ``MIGRATIONS[n]`` turns version n into
n + 1. They run at start-up in one transaction under an advisory lock, so that agents starting
together migrate once; an agent meeting a newer schema than it knows refuses to start.

**One agent per database, for now.** Until agents claim streams (the fleet), every core runs
every stream it loads, so two cores on one database would read each camera twice. The store
holds a session advisory lock while the core runs; a second core fails at start-up, as a second
core on one SQLite file does.

**Threading.** asyncpg runs on an event loop of its own, in a thread of its own: the database's
latency never waits on the core's loop (frames, batching, the API), and the registry's
synchronous ``load()`` at start-up works like SQLite's. Writes go through one queue, on one
connection, in order. What a user asked for is committed before the API answers; status
changes of the workers are committed with ``synchronous_commit = off``, the same two speeds
as SQLite's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import asyncpg

from lva_common.config import mask_url
from lva_core.runtime.background_loop import BackgroundLoop
from lva_core.streams.record import StreamRecord
from lva_core.streams.store.base import StoreError
from lva_core.streams.store.rows import COLUMNS, from_row, to_row

log = logging.getLogger("lva_core.streams.store")

T = TypeVar("T")

SCHEMA_VERSION = 3
# Held for the core's lifetime (one agent per database until claims exist); any fixed 64-bit key.
SINGLE_AGENT_LOCK = 0x4C56_4153_5452_4D31  # "LVASTRM1"
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
}

# What a dead connection raises: the server went away (restart, crash) or the network did.
_CONNECTION_LOST = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
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
_SAVE_STATUS = """
UPDATE streams SET status = $1, error = $2, last_update_time = $3,
    owner_id = CASE WHEN $1 IN ('pending', 'in_progress', 'restart') THEN owner_id END,
    owner_incarnation = CASE WHEN $1 IN ('pending', 'in_progress', 'restart') THEN owner_incarnation END
WHERE stream_id = $4
"""
_UPDATE_STATUS = "UPDATE streams SET status = $1, error = $2, last_update_time = $3 WHERE stream_id = $4"


class PostgresStreamStore:
    """One database; open it, load() once, then write through the async methods."""

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        self.url = url
        self._location = mask_url(url)
        self._connect_timeout = connect_timeout
        self._closed = False
        self._background = BackgroundLoop("stream-store")
        self._db: asyncpg.Connection | None = None
        self._writes: asyncio.Queue[tuple[str, tuple[Any, ...], bool, Future[None] | None] | None]
        self._writer: asyncio.Task[None] | None = None
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
        """A connection holding the one-core lock; StoreError when either cannot be had."""
        try:
            db = await asyncpg.connect(self.url, timeout=self._connect_timeout)
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ValueError) as exc:
            # ValueError: a URL asyncpg cannot parse. Never the URL itself: it may hold a password.
            raise StoreError(self._explain(exc)) from None
        try:
            held = await db.fetchval("SELECT pg_try_advisory_lock($1)", SINGLE_AGENT_LOCK)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            db.terminate()
            raise StoreError(self._explain(exc)) from None
        if not held:
            db.terminate()
            raise StoreError(
                f"the stream store {self._location} is in use by another core; one core per "
                "database until the fleet's agents claim streams"
            )
        return db

    async def _open(self) -> None:
        self._db = await self._connect()
        try:
            await self._migrate(self._db)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(self._explain(exc)) from None
        self._writes = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_in_order())

    async def _execute(self, sql: str, params: tuple[Any, ...], durable: bool) -> None:
        """One statement in its own transaction. A lost connection (a server restart, a network
        cut) is replaced once and the statement retried, so that one blip costs no write."""
        for attempt in (1, 2):
            try:
                if self._db is None or self._db.is_closed():
                    self._db = await self._connect()
                    log.warning("stream store %s: reconnected", self._location)
                async with self._db.transaction():
                    if not durable:
                        # A worker's status: a crash of the server may lose the last few.
                        await self._db.execute("SET LOCAL synchronous_commit = off")
                    await self._db.execute(sql, *params)
                return
            except _CONNECTION_LOST:
                if attempt == 2:
                    raise
                if self._db is not None:
                    self._db.terminate()
                self._db = None

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
        if self._db is not None and not self._db.is_closed():
            try:
                await self._db.close(timeout=5)
            except (*_CONNECTION_LOST, TimeoutError):
                self._db.terminate()

    async def _write_in_order(self) -> None:
        """The one writer: each queued statement in turn, on the one connection."""
        while (item := await self._writes.get()) is not None:
            sql, params, durable, done = item
            try:
                await self._execute(sql, params, durable)
            except Exception as exc:
                error = exc if isinstance(exc, StoreError) else StoreError(self._explain(exc))
                if done is not None:
                    done.set_exception(error)
                else:
                    log.error("stream status not saved: %s", error)
            else:
                if done is not None:
                    done.set_result(None)

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

    def _enqueue(self, sql: str, params: tuple[Any, ...], durable: bool, done: Future[None] | None) -> None:
        self._background.call_soon(self._writes.put_nowait, (sql, params, durable, done))

    async def _durable(self, sql: str, params: tuple[Any, ...]) -> None:
        if self._closed:
            raise StoreError("the stream store is closed")
        done: Future[None] = Future()
        self._enqueue(sql, params, True, done)
        await asyncio.wrap_future(done)

    async def insert(self, record: StreamRecord) -> None:
        """Store a new stream; committed when this returns."""
        await self._durable(_INSERT, (*to_row(record), sorted({s.name for s in record.analytics})))

    async def save_status(self, record: StreamRecord) -> None:
        """A status the user asked for (pause, resume); committed when this returns."""
        await self._durable(_SAVE_STATUS, self._status(record))

    def note_status(self, record: StreamRecord) -> None:
        """A status the worker reached: queued, committed in order, not waited for. Never raises."""
        if not self._closed:
            self._enqueue(_UPDATE_STATUS, self._status(record), False, None)

    @staticmethod
    def _status(record: StreamRecord) -> tuple[Any, ...]:
        return (record.status.value, record.error, record.last_update_time, record.stream_id)

    async def delete(self, stream_id: str) -> None:
        """Forget a stream; committed when this returns."""
        await self._durable("DELETE FROM streams WHERE stream_id = $1", (stream_id,))

    async def close(self) -> None:
        """Finish the queued writes, then disconnect (which releases the one-core lock); idempotent."""
        if self._closed:
            return
        self._closed = True

        async def finish() -> None:
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
