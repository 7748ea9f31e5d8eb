"""The outbox contract (lva_core/delivery/outbox.py): what delivery needs from the stream store,
run against every implementation.

The backends: the single core's SQLite store (in memory, and a file), and the fleet's PostgreSQL
store on a throw-away cluster of this module's (lva_testkit.postgres), a database per test. A
persistent backend is also reopened, so that what a test reads back comes from storage. Then
what only the PostgreSQL outbox does: two agents' claims of one lane, appends that wait for a
database that went away, a wrong entry that fails alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from lva_common.aio import wait_within
from lva_core.delivery.outbox import Entry, Lane, Outbox
from lva_core.delivery.postgres_outbox import PostgresOutbox, lane_keys
from lva_core.delivery.sqlite_outbox import SqliteOutbox
from lva_core.runtime.local_postgres import LocalPostgres
from lva_core.streams.store.base import StoreError
from lva_core.streams.store.postgresql import PostgresStreamStore
from lva_core.streams.store.sqlite import MEMORY, SqliteStreamStore
from lva_testkit.postgres import PostgresCluster, new_cluster

STREAM = "00000000-0000-4000-8000-000000000001"
LANE = Lane(STREAM, "analytics[0].parameters.callbacks[0]")
OTHER = Lane(STREAM, "analytics[0].parameters.callbacks[1]")  # the same stream's next callback
ELSEWHERE = Lane("00000000-0000-4000-8000-000000000002", "analytics[0].parameters.callbacks[0]")
ROOMY = 100_000  # a bound that trims nothing


def entry(lane: Lane, number: int, created: float | None = None) -> Entry:
    """An event numbered so that order shows, its body with bytes no text would keep."""
    body = b'{"n": %d, "lane": "%s"}\x00\xff\n' % (number, lane.callback.encode())
    return Entry(lane, f"event-{number}", body, 1_700_000_000.125 + number if created is None else created)


@dataclass
class Opened:
    store: SqliteStreamStore | PostgresStreamStore
    outbox: Outbox
    new_outbox: Callable[[], Outbox]  # another outbox on the same open store

    async def close(self) -> None:
        await self.outbox.close()
        await self.store.close()


@dataclass(frozen=True)
class Backend:
    name: str
    persistent: bool
    open: Callable[[], Opened]  # the test's store; opened again, the same store


def _sqlite(path: str) -> Opened:
    store = SqliteStreamStore(path)
    return Opened(store, SqliteOutbox(store), lambda: SqliteOutbox(store))


def _postgresql(url: str) -> Opened:
    store = PostgresStreamStore(url)
    return Opened(store, PostgresOutbox(store), lambda: PostgresOutbox(store))


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PostgresCluster]:
    """This module's throw-away PostgreSQL cluster; each test takes a database of its own."""
    cluster = new_cluster()
    cluster.start()
    yield cluster
    cluster.stop()


def _database(cluster: PostgresCluster, place: Path) -> str:
    """The one database of a test's directory: the same directory opens the same database."""
    return cluster.database("t_" + hashlib.sha1(str(place).encode()).hexdigest()[:16])


@pytest.fixture(params=["sqlite-memory", "sqlite-file", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    name: str = request.param
    if name == "sqlite-memory":
        return Backend(name, False, lambda: _sqlite(MEMORY))
    if name == "sqlite-file":
        return Backend(name, True, lambda: _sqlite(str(tmp_path / "streams.sqlite3")))
    url = _database(request.getfixturevalue("pg_cluster"), tmp_path)
    return Backend(name, True, lambda: _postgresql(url))


@pytest.fixture
async def opened(backend: Backend) -> AsyncIterator[Opened]:
    store = backend.open()
    yield store
    await store.close()  # again after a test that closed it: closing is idempotent


async def ids(outbox: Outbox, lane: Lane) -> list[str]:
    return [p.event_id for p in await outbox.pending(lane, 0, ROOMY)]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# ---------------------------------------------------------------- the contract


async def test_appends_keep_their_call_order_within_a_lane(opened: Opened) -> None:
    # Issued without awaiting in between, as the analytics' events are, on two lanes at once.
    outbox, count = opened.outbox, 700
    written = []
    for n in range(count):
        written.append(outbox.append(entry(LANE, n), ROOMY))
        written.append(outbox.append(entry(OTHER, n), ROOMY))
    assert await asyncio.gather(*written) == [0] * (2 * count)
    for lane in (LANE, OTHER):
        pending = await outbox.pending(lane, 0, ROOMY)
        assert [p.event_id for p in pending] == [f"event-{n}" for n in range(count)]
        seqs = [p.seq for p in pending]
        assert seqs == sorted(seqs) and len(set(seqs)) == count
        sample = pending[321]
        assert (sample.body, sample.created) == (entry(lane, 321).body, entry(lane, 321).created)
    assert await outbox.pending(ELSEWHERE, 0, ROOMY) == []


async def test_the_bound_trims_the_oldest_and_says_how_many(opened: Opened) -> None:
    outbox = opened.outbox
    for n in range(4):
        assert await outbox.append(entry(OTHER, n), ROOMY) == 0
    assert [await outbox.append(entry(LANE, n), 3) for n in range(5)] == [0, 0, 0, 1, 1]
    assert await ids(outbox, LANE) == ["event-2", "event-3", "event-4"]
    # Issued together, each append trims for itself: 3 held, 5 more with a bound of 4.
    together = [outbox.append(entry(LANE, n), 4) for n in range(5, 10)]
    assert await asyncio.gather(*together) == [0, 1, 1, 1, 1]
    assert await ids(outbox, LANE) == ["event-6", "event-7", "event-8", "event-9"]
    # A lower bound takes several at once, the oldest.
    assert await outbox.append(entry(LANE, 10), 2) == 3
    assert await ids(outbox, LANE) == ["event-9", "event-10"]
    assert await ids(outbox, OTHER) == [f"event-{n}" for n in range(4)]  # another lane's bound


async def test_pending_reads_after_a_seq_up_to_a_limit(opened: Opened) -> None:
    outbox = opened.outbox
    written = []
    for n in range(10):
        written += [outbox.append(entry(LANE, n), ROOMY), outbox.append(entry(OTHER, n), ROOMY)]
    await asyncio.gather(*written)
    first = await outbox.pending(LANE, 0, 4)
    assert [p.event_id for p in first] == ["event-0", "event-1", "event-2", "event-3"]
    second = await outbox.pending(LANE, first[-1].seq, 4)
    assert [p.event_id for p in second] == ["event-4", "event-5", "event-6", "event-7"]
    rest = await outbox.pending(LANE, second[-1].seq, 100)
    assert [p.event_id for p in rest] == ["event-8", "event-9"]
    assert await outbox.pending(LANE, rest[-1].seq, 100) == []
    assert await outbox.pending(LANE, first[1].seq - 1, 1) == [first[1]]
    assert await outbox.pending(LANE, 0, 0) == []


async def test_ack_removes_one_delivered_entry(opened: Opened) -> None:
    outbox = opened.outbox
    await asyncio.gather(*(outbox.append(entry(LANE, n), ROOMY) for n in range(3)))
    await outbox.append(entry(OTHER, 0), ROOMY)
    pending = await outbox.pending(LANE, 0, 10)
    await outbox.ack(LANE, pending[1].seq)
    assert await ids(outbox, LANE) == ["event-0", "event-2"]
    await outbox.ack(LANE, pending[1].seq)  # gone already: nothing happens
    await outbox.ack(LANE, pending[-1].seq + 1_000_000)
    assert await ids(outbox, LANE) == ["event-0", "event-2"]
    await outbox.ack(LANE, pending[0].seq)
    await outbox.ack(LANE, pending[2].seq)
    assert await outbox.lanes() == {OTHER: 1}


async def test_expire_removes_the_entries_created_before_a_time(opened: Opened) -> None:
    outbox = opened.outbox
    for created in (100.0, 200.0, 300.0, 400.5):
        await outbox.append(entry(LANE, int(created), created), ROOMY)
    await outbox.append(entry(OTHER, 1, 100.0), ROOMY)
    assert await outbox.expire(LANE, 300.0) == 2
    assert await ids(outbox, LANE) == ["event-300", "event-400"]  # created at 300: not before
    assert await outbox.expire(LANE, 300.0) == 0
    assert await outbox.expire(LANE, 1e12) == 2
    assert await outbox.lanes() == {OTHER: 1}


async def test_lanes_counts_every_lane_that_holds_entries(opened: Opened) -> None:
    outbox = opened.outbox
    assert await outbox.lanes() == {}
    written = [outbox.append(entry(LANE, n), ROOMY) for n in range(3)]
    written += [outbox.append(entry(ELSEWHERE, n), ROOMY) for n in range(2)]
    written.append(outbox.append(entry(OTHER, 0), ROOMY))
    await asyncio.gather(*written)
    assert await outbox.lanes() == {LANE: 3, ELSEWHERE: 2, OTHER: 1}
    [only] = await outbox.pending(OTHER, 0, 10)
    await outbox.ack(OTHER, only.seq)
    assert await outbox.lanes() == {LANE: 3, ELSEWHERE: 2}


async def test_forget_removes_a_stream_with_the_appends_issued_before_it(opened: Opened) -> None:
    outbox = opened.outbox
    await asyncio.gather(
        outbox.append(entry(LANE, 0), ROOMY),
        outbox.append(entry(OTHER, 0), ROOMY),
        outbox.append(entry(ELSEWHERE, 0), ROOMY),
    )
    last = [outbox.append(entry(LANE, n), ROOMY) for n in range(1, 4)]  # not awaited yet
    assert await outbox.forget(STREAM) == 5
    assert await asyncio.gather(*last) == [0, 0, 0]
    assert await outbox.lanes() == {ELSEWHERE: 1}
    assert await outbox.forget("no-such-stream") == 0
    assert await ids(outbox, ELSEWHERE) == ["event-0"]


# The stores that keep anything once closed: an in-memory one is not asked to.
@pytest.mark.parametrize("backend", ["sqlite-file", "postgresql"], indirect=True)
async def test_entries_survive_closing_and_reopening_the_store(backend: Backend, opened: Opened) -> None:
    assert backend.persistent
    outbox = opened.outbox
    written = [outbox.append(entry(LANE, n), ROOMY) for n in range(5)]
    written.append(outbox.append(entry(ELSEWHERE, 7), ROOMY))
    assert await asyncio.gather(*written) == [0] * 6
    before = await outbox.pending(LANE, 0, ROOMY)
    await opened.close()
    again = backend.open()
    try:
        assert await again.outbox.pending(LANE, 0, ROOMY) == before
        assert [p.body for p in before] == [entry(LANE, n).body for n in range(5)]
        assert await again.outbox.lanes() == {LANE: 5, ELSEWHERE: 1}
        assert await again.outbox.append(entry(LANE, 5), ROOMY) == 0
        newest = (await again.outbox.pending(LANE, before[-1].seq, ROOMY))[0]
        assert newest.event_id == "event-5" and newest.seq > before[-1].seq
    finally:
        await again.close()


async def test_close_finishes_the_queued_appends_and_refuses_later_ones(opened: Opened) -> None:
    outbox = opened.outbox
    queued = [outbox.append(entry(LANE, n), ROOMY) for n in range(50)]
    await outbox.close()
    assert await asyncio.gather(*queued) == [0] * 50
    assert await outbox.append(entry(LANE, 50), ROOMY) == -1
    await outbox.close()  # idempotent
    fresh = opened.new_outbox()
    try:
        assert await ids(fresh, LANE) == [f"event-{n}" for n in range(50)]
    finally:
        await fresh.close()


async def test_a_single_agent_may_deliver_every_lane(opened: Opened) -> None:
    outbox = opened.outbox
    assert await outbox.claim(LANE) is True
    assert await outbox.claim(LANE) is True  # held already
    assert await outbox.claim(OTHER) is True
    await outbox.release(LANE)
    await outbox.release(ELSEWHERE)  # never claimed: nothing happens
    assert await outbox.claim(LANE) is True
    await outbox.close()
    fresh = opened.new_outbox()
    try:
        assert await fresh.claim(LANE) is True  # closing gave the lanes back
    finally:
        await fresh.close()


# ---------------------------------------------------------------- only PostgreSQL


async def _holders(admin: asyncpg.Connection, lane: Lane) -> list[int]:
    """The sessions that hold the lane's advisory lock."""
    first, second = (key & 0xFFFFFFFF for key in lane_keys(lane))  # pg_locks shows them as oid
    rows = await admin.fetch(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
        "AND classid = $1 AND objid = $2",
        first,
        second,
    )
    return [int(r["pid"]) for r in rows]


async def test_two_agents_never_claim_one_lane_at_once(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    url = _database(pg_cluster, tmp_path)
    stores = [PostgresStreamStore(url), PostgresStreamStore(url)]
    first, second = (PostgresOutbox(store) for store in stores)
    admin = await asyncpg.connect(url)  # a third connection: the operator's
    try:
        assert await first.claim(LANE) and await first.claim(LANE)
        assert not await second.claim(LANE)
        assert await second.claim(OTHER) and not await first.claim(OTHER)
        [first_pid] = await _holders(admin, LANE)
        [other_pid] = await _holders(admin, OTHER)
        assert other_pid != first_pid
        # Given back: the other agent takes it, and now the first one may not.
        await first.release(LANE)
        assert await _holders(admin, LANE) == []
        assert await second.claim(LANE) and not await first.claim(LANE)
        # The second agent's session dies (as with an agent that was killed): its lanes are free,
        # and it has lost them: it claims them again, and gets only those nobody took meanwhile.
        assert await _holders(admin, LANE) == [other_pid]  # one session holds the agent's lanes
        second_pid = other_pid
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", second_pid)
        assert await eventually(lambda: first.claim(LANE))
        assert not await second.claim(LANE)
        assert await second.claim(OTHER)  # taken again, on a new session
        assert await _holders(admin, OTHER) not in ([second_pid], [])
        assert not await first.claim(OTHER)
        # Closing an agent ends its session: the other takes its lanes.
        await first.close()
        assert await eventually(lambda: second.claim(LANE))
    finally:
        await admin.close()
        for outbox in (first, second):
            await outbox.close()
        for store in stores:
            await store.close()


async def test_appends_wait_for_a_database_that_went_away(caplog: pytest.LogCaptureFixture) -> None:
    # A cluster of its own: stopping the module's would cut the other tests' stores.
    caplog.set_level(logging.WARNING, "lva_core.delivery")
    server = new_cluster()
    server.start()
    loop = asyncio.get_running_loop()
    try:
        store = PostgresStreamStore(server.url)
        outbox = PostgresOutbox(store, max_queued=5, close_timeout=1.0)
        try:
            assert await outbox.append(entry(LANE, 0), ROOMY) == 0
            assert await outbox.claim(LANE)
            await loop.run_in_executor(None, LocalPostgres.stop, server, "fast")  # its data kept
            waiting = [asyncio.ensure_future(outbox.append(entry(LANE, n), ROOMY)) for n in range(1, 9)]
            # Beyond the bound: refused at once. Within it: waiting for the database.
            refused = await wait_within(asyncio.gather(*waiting[5:]), 5)
            assert refused == [-1, -1, -1]
            await asyncio.sleep(1.0)
            assert not any(each.done() for each in waiting[:5])
            assert not await outbox.claim(LANE)  # no database: no lane to deliver
            with pytest.raises(StoreError, match="cannot be reached"):
                await outbox.pending(LANE, 0, 10)
            await loop.run_in_executor(None, server.start)  # the same port, the same data
            assert await wait_within(asyncio.gather(*waiting[:5]), 30) == [0] * 5
            assert await ids(outbox, LANE) == [f"event-{n}" for n in range(6)]
            assert await outbox.claim(LANE)  # taken again on a new session
            # Closed while the database is away: the waiting appends give up after close_timeout.
            await loop.run_in_executor(None, LocalPostgres.stop, server, "fast")
            last = asyncio.ensure_future(outbox.append(entry(LANE, 9), ROOMY))
            await wait_within(outbox.close(), 10)
            assert await last == -1
        finally:
            await outbox.close()
            await store.close()
    finally:
        server.stop()
    logged = [r.getMessage() for r in caplog.records if r.name == "lva_core.delivery"]
    assert any("cannot be reached" in m for m in logged), logged
    assert any("the outbox's bound" in m for m in logged), logged
    assert any("3 events were refused" in m for m in logged), logged
    assert any("claims lost" in m for m in logged), logged
    assert any("1 queued writes not written before closing" in m for m in logged), logged


async def test_an_entry_the_database_refuses_fails_alone(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    # PostgreSQL's text holds no NUL: that append fails (-1), the ones around it in its
    # transaction are written all the same, in order.
    opened = _postgresql(_database(pg_cluster, tmp_path))
    try:
        outbox = opened.outbox
        wrong = Entry(LANE, "event-\x00", b"{}", 1.0)
        results = [outbox.append(entry(LANE, 0), ROOMY), outbox.append(wrong, ROOMY)]
        results += [outbox.append(entry(LANE, n), ROOMY) for n in (1, 2)]
        assert await asyncio.gather(*results) == [0, -1, 0, 0]
        assert await ids(outbox, LANE) == ["event-0", "event-1", "event-2"]
        assert await outbox.append(entry(LANE, 3), ROOMY) == 0  # the writer goes on
    finally:
        await opened.close()


async def test_appends_written_together_trim_as_if_written_one_at_a_time(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    # The PostgreSQL outbox writes what is queued in one transaction, a run of appends in one
    # insert and a trim per lane; what each append reports must still be what it pushed out.
    url = _database(pg_cluster, tmp_path)
    opened = _postgresql(url)
    outbox = opened.outbox
    admin = await asyncpg.connect(url)
    try:
        await asyncio.gather(*(outbox.append(entry(LANE, n), ROOMY) for n in range(6)))
        # The store's loop held for a moment: what is issued meanwhile waits, then goes together.
        opened.store.loop.call_soon_threadsafe(time.sleep, 0.5)
        issued = [
            outbox.append(entry(LANE, 6), 2),  # 7 held, a bound of 2: 5 go
            outbox.append(entry(LANE, 7), 2),
            outbox.append(entry(OTHER, 0), ROOMY),
            outbox.append(entry(ELSEWHERE, 0), ROOMY),
            outbox.append(entry(LANE, 8), 2),
            outbox.append(entry(LANE, 9), 10),  # a higher bound: nothing goes
            outbox.append(entry(LANE, 10), 3),
        ]
        forgotten = asyncio.ensure_future(outbox.forget(ELSEWHERE.stream_id))
        await asyncio.sleep(0)  # the forget is queued once its coroutine runs
        issued.append(outbox.append(entry(ELSEWHERE, 1), ROOMY))  # after the forget: kept
        assert await asyncio.gather(*issued) == [5, 1, 0, 0, 1, 0, 1, 0]
        assert await forgotten == 1
        assert await ids(outbox, LANE) == ["event-8", "event-9", "event-10"]
        assert await outbox.lanes() == {LANE: 3, OTHER: 1, ELSEWHERE: 1}
        together = await admin.fetchval(
            "SELECT count(DISTINCT xmin::text) FROM outbox WHERE NOT (stream_id = $1 AND event_id = $2)",
            ELSEWHERE.stream_id,
            "event-1",
        )
        assert together == 1  # all in one transaction (the forget's run too), so tested above
    finally:
        await admin.close()
        await opened.close()


async def test_a_store_closed_first_finishes_its_outbox(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    # The outbox lives on the store's loop: closing the store writes what the outbox holds
    # queued, then refuses more, rather than dropping the queue with the loop.
    url = _database(pg_cluster, tmp_path)
    opened = _postgresql(url)
    queued = [opened.outbox.append(entry(LANE, n), ROOMY) for n in range(20)]
    await opened.store.close()
    assert await wait_within(asyncio.gather(*queued), 10) == [0] * 20
    assert await opened.outbox.append(entry(LANE, 20), ROOMY) == -1
    assert await opened.outbox.claim(LANE) is False
    with pytest.raises(StoreError):
        await opened.outbox.pending(LANE, 0, 10)
    await wait_within(opened.outbox.close(), 10)
    again = _postgresql(url)
    try:
        assert await ids(again.outbox, LANE) == [f"event-{n}" for n in range(20)]
    finally:
        await again.close()
