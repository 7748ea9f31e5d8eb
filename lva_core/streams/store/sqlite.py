"""The SQLite stream store: every stream and its settings in an embedded SQLite file, so that a restart of
the core loses nothing a user created.

One row per stream. The settings are kept as the contract's proto messages in their wire format
(``data``, ``autorestart``, converted by ``lva_core/api/convert.py``), which the proto's
compatibility rules already protect, and the validated analytics as JSON. Live statistics are
not stored: they restart from 0.

Durability has two speeds. What a user asked for (create, pause/resume, delete) is committed
with ``synchronous=FULL`` before the API answers, so an answered request survives even a power
loss. Status changes the workers make are committed with ``synchronous=NORMAL`` (WAL: no fsync
per commit): they survive a crash of the core, only a power loss can take the last few.

Every write runs on one thread of its own, in order, so the event loop never waits for the
disk; a create awaits its commit without blocking other requests. The file is locked
exclusively while the core runs: a second core on the same file fails at start-up instead of
both overwriting each other.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from lva_core.streams.record import StreamRecord
from lva_core.streams.store.base import StoreError
from lva_core.streams.store.rows import COLUMNS, from_row, to_row

log = logging.getLogger("lva_core.streams.store")

T = TypeVar("T")

# PRAGMA user_version of the file. A newer core migrates older files with MIGRATIONS.
SCHEMA_VERSION = 2
MEMORY = ":memory:"

# Version 2: the outbox of outbound events (lva_core/delivery/sqlite_outbox.py), one row per
# event and callback until its receiver accepted it.
_OUTBOX = [
    """
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id TEXT NOT NULL,
    callback TEXT NOT NULL,        -- the callback's path: analytics[i].parameters.callbacks[j]
    event_id TEXT NOT NULL,
    body BLOB NOT NULL,            -- the envelope as sent
    created REAL NOT NULL
)
""",
    "CREATE INDEX outbox_lane ON outbox (stream_id, callback, seq)",
]

_SCHEMA = """
CREATE TABLE streams (
    stream_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    data BLOB NOT NULL,            -- lva.v1.StreamData, wire format
    analytics TEXT NOT NULL,       -- JSON: [{"name": ..., "parameters": {...}}], as validated
    autorestart BLOB NOT NULL,     -- lva.v1.Autorestart, wire format
    status TEXT NOT NULL,
    error TEXT,
    create_time REAL NOT NULL,
    last_update_time REAL NOT NULL
)
"""
# MIGRATIONS[n] turns a version-n file into version n + 1 (in one transaction with the version bump).
MIGRATIONS: dict[int, list[str]] = {1: _OUTBOX}


class SqliteStreamStore:
    """One SQLite file (or memory); open it, load() once, then write through the async methods."""

    def __init__(self, path: str = MEMORY) -> None:
        self.path = path or MEMORY
        self._closed = False
        try:
            if self.path != MEMORY:
                file = Path(self.path)
                file.parent.mkdir(parents=True, exist_ok=True)
                # The references keep their credentials (a camera is reopened with them): owner
                # only. SQLite gives its WAL file the same mode.
                os.close(os.open(file, os.O_RDWR | os.O_CREAT, 0o600))
            # The connection moves to the writer thread after load(); only that thread uses it then.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the stream store {self.path}: {exc}") from exc
        try:
            self._prepare()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(self._explain(exc)) from exc
        except StoreError:
            self._db.close()
            raise
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-store")

    def _explain(self, exc: sqlite3.Error) -> str:
        text = str(exc)
        if "locked" in text:
            why = "it is in use by another process (another core?)"
        elif "not a database" in text or "malformed" in text or "corrupt" in text:
            why = "the file is not a valid stream store or is damaged; move it away to start empty"
        elif "readonly" in text or "unable to open" in text:
            why = "the file or its directory is not writable"
        else:
            why = "unexpected database error"
        return f"cannot use the stream store {self.path}: {text} ({why})"

    def _prepare(self) -> None:
        db = self._db
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")  # the first read: a file that is no database fails here
        db.execute("PRAGMA synchronous=NORMAL")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StoreError(
                f"the stream store {self.path} is damaged ({check}); move it away to start empty"
            )
        # Taking the write lock now makes a read-only file, or a second core, fail at start-up.
        db.execute("BEGIN EXCLUSIVE")
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version == 0 and "streams" not in tables:
                db.execute(_SCHEMA)
                version = 1  # then migrated like any version-1 file
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the stream store {self.path} has schema version {version}, written by a newer "
                    f"agent; this one reads up to version {SCHEMA_VERSION}"
                )
            while version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
                version += 1
            db.execute(f"PRAGMA user_version = {version}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @property
    def persistent(self) -> bool:
        return self.path != MEMORY

    @property
    def location(self) -> str:
        return self.path

    def schema_version(self) -> int:
        return int(self._run_sync(lambda: self._db.execute("PRAGMA user_version").fetchone()[0]))

    def load(self) -> list[StreamRecord]:
        """Every stored stream, in creation order. A row that cannot be read is a StoreError."""

        def read() -> list[StreamRecord]:
            rows = self._db.execute(f"SELECT {COLUMNS} FROM streams ORDER BY rowid").fetchall()
            records = []
            for row in rows:
                try:
                    records.append(from_row(row))
                except Exception as exc:  # a damaged row must stop start-up, never vanish silently
                    raise StoreError(
                        f"the stream store {self.path} holds an unreadable stream {row['stream_id']}: {exc}"
                    ) from exc
            return records

        return self._run_sync(read)

    # ------------------------------------------------------------------ writes

    def _run_sync(self, fn: Callable[[], T]) -> T:
        """Start-up and tests: run on the writer thread and wait."""
        return self._writer.submit(fn).result()

    def on_writer(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        """Run ``fn`` with the connection on the writer thread, after every write queued so far.

        For the outbox (lva_core/delivery/sqlite_outbox.py), which shares this file and its one
        connection: its rows are written in the same order as the streams' statuses.
        """
        if self._closed:
            raise StoreError("the stream store is closed")
        return self._writer.submit(fn, self._db)

    def _write(self, sql: str, params: tuple[Any, ...], durable: bool) -> None:
        db = self._db
        # Switched per write: outside a transaction the setting is free, and FULL makes this
        # commit (and every NORMAL one before it, the WAL being one file) reach the disk.
        db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        db.execute(sql, params)

    async def _durable(self, sql: str, params: tuple[Any, ...]) -> None:
        if self._closed:
            raise StoreError("the stream store is closed")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._write, sql, params, True)
        except sqlite3.Error as exc:
            raise StoreError(self._explain(exc)) from exc

    async def insert(self, record: StreamRecord) -> None:
        """Store a new stream; committed to disk when this returns."""
        marks = ", ".join("?" * len(COLUMNS.split(",")))
        await self._durable(f"INSERT INTO streams ({COLUMNS}) VALUES ({marks})", to_row(record))

    async def save_status(self, record: StreamRecord) -> None:
        """A status the user asked for (pause, resume); committed to disk when this returns."""
        await self._durable(*self._status_update(record))

    def note_status(self, record: StreamRecord) -> None:
        """A status the worker reached: queued, committed in order, no fsync. Never raises."""
        if self._closed:
            return
        future: Future[None] = self._writer.submit(self._write, *self._status_update(record), False)
        future.add_done_callback(self._log_failure)

    def _status_update(self, record: StreamRecord) -> tuple[str, tuple[Any, ...]]:
        return (
            "UPDATE streams SET status = ?, error = ?, last_update_time = ? WHERE stream_id = ?",
            (record.status.value, record.error, record.last_update_time, record.stream_id),
        )

    def _log_failure(self, future: Future[None]) -> None:
        exc = future.exception()
        if exc is not None:
            log.error("stream status not saved: %s", exc)

    async def delete(self, stream_id: str) -> None:
        """Forget a stream; committed to disk when this returns."""
        await self._durable("DELETE FROM streams WHERE stream_id = ?", (stream_id,))

    async def close(self) -> None:
        """Finish the queued writes, then close: the WAL is checkpointed into the file and removed."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._db.close)
        except sqlite3.Error as exc:
            log.error("closing the stream store %s: %s", self.path, exc)
        self._writer.shutdown(wait=False)
        log.info("stream store %s closed", self.path)
