"""The stream store contract: what every ``StreamStore`` must do, run against each implementation.

A new store (the fleet's PostgreSQL one) joins by adding a ``Backend`` to ``BACKENDS``: every
test here then runs against it too. A persistent backend is also reopened, so that what a test
reads back comes from storage, not from the instance that wrote it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from lva_core.streams.record import StreamRecord
from lva_core.streams.spec import AnalyticSpec, Autorestart, Rate, Roi, SourceData
from lva_core.streams.state import Status
from lva_core.streams.store.base import StoreError, StreamStore
from lva_core.streams.store.sqlite import MEMORY, SqliteStreamStore


@dataclass(frozen=True)
class Backend:
    name: str
    persistent: bool
    # Opens the store at a location derived from the test's temporary directory; the same
    # directory opens the same store again.
    open: Callable[[Path], StreamStore]


BACKENDS = [
    Backend("sqlite-file", True, lambda tmp: SqliteStreamStore(str(tmp / "streams.sqlite3"))),
    Backend("sqlite-memory", False, lambda tmp: SqliteStreamStore(MEMORY)),
]


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> Backend:
    value: Backend = request.param
    return value


@pytest.fixture
async def store(backend: Backend, tmp_path: Path) -> AsyncIterator[StreamStore]:
    opened = backend.open(tmp_path)
    yield opened
    await opened.close()


def record(number: int, **changes: object) -> StreamRecord:
    """A stream with every field away from its default, numbered so that order shows."""
    fields: dict[str, object] = {
        "stream_id": f"00000000-0000-4000-8000-{number:012d}",
        "account_id": "5b0b7c57-3f3c-4a4e-8f0e-6f2f5d0c9a11",
        "name": f"camera {number} ü",
        "description": "east entrance\nsecond line",
        "data": SourceData(
            reference="rtsp://admin:hunter2@127.0.0.1:8554/live?token=abc",
            kind="stream",
            rotation=90,
            roi=Roi(1.5, 2, 30, 40, "percent"),
            rate=Rate(2.5, "second"),
        ),
        "analytics": [
            AnalyticSpec("people_counter", {"probe_count": 2, "roi": None, "nested": {"a": [1, 2.5]}})
        ],
        "autorestart": Autorestart(restart=1, attempt_count=7, delay=0.25),
        "status": Status.PENDING,
        "error": None,
        "create_time": 1_700_000_000.0 + number,
        "last_update_time": 1_700_000_100.0 + number,
    }
    fields.update(changes)
    return StreamRecord(**fields)  # type: ignore[arg-type]


def kept(r: StreamRecord) -> tuple[object, ...]:
    """What a store keeps of a record (live statistics are not kept)."""
    return (
        r.stream_id,
        r.account_id,
        r.name,
        r.description,
        r.data,
        r.analytics,
        r.autorestart,
        r.status,
        r.error,
        r.create_time,
        r.last_update_time,
    )


async def read_back(backend: Backend, store: StreamStore, tmp_path: Path) -> list[StreamRecord]:
    """What the store holds: from a reopened store where it persists, else from the same one."""
    if not backend.persistent:
        return store.load()
    await store.close()
    again = backend.open(tmp_path)
    try:
        return again.load()
    finally:
        await again.close()


async def test_a_new_store_is_empty(store: StreamStore) -> None:
    assert store.load() == []


async def test_the_backend_says_whether_it_persists(backend: Backend, store: StreamStore) -> None:
    assert store.persistent is backend.persistent
    assert isinstance(store.location, str) and store.location
    assert "hunter2" not in store.location


async def test_every_field_round_trips_in_creation_order(
    backend: Backend, store: StreamStore, tmp_path: Path
) -> None:
    records = [record(3), record(1), record(2, data=SourceData("media/clip.mp4", "videofile"))]
    for each in records:
        await store.insert(each)
    loaded = await read_back(backend, store, tmp_path)
    assert [kept(r) for r in loaded] == [kept(r) for r in records]
    assert all(r.statistics.frames_decoded == 0 for r in loaded)


async def test_absent_parts_stay_absent(backend: Backend, store: StreamStore, tmp_path: Path) -> None:
    bare = record(1, data=SourceData("rtsp://127.0.0.1/x", "stream"), analytics=[], autorestart=Autorestart())
    await store.insert(bare)
    (loaded,) = await read_back(backend, store, tmp_path)
    assert loaded.data.roi is None and loaded.data.rate is None
    assert loaded.analytics == [] and loaded.autorestart == Autorestart()


async def test_a_stream_id_is_inserted_once(store: StreamStore) -> None:
    await store.insert(record(1))
    with pytest.raises(StoreError):
        await store.insert(record(1, name="again"))
    assert [r.name for r in store.load()] == ["camera 1 ü"]


async def test_statuses_asked_for_and_reached_are_kept(
    backend: Backend, store: StreamStore, tmp_path: Path
) -> None:
    first, second = record(1), record(2)
    await store.insert(first)
    await store.insert(second)
    await store.save_status(replace(first, status=Status.PAUSE, last_update_time=1_800_000_000.0))
    # A worker's status: queued, never awaited; it is written before anything written after it.
    store.note_status(replace(second, status=Status.RESTART, error="timeout: no data for 5 s"))
    store.note_status(replace(second, status=Status.FAILURE, error="timeout: gave up"))
    await store.save_status(replace(first, status=Status.PENDING, last_update_time=1_800_000_001.0))
    loaded = {r.stream_id: r for r in await read_back(backend, store, tmp_path)}
    assert (loaded[first.stream_id].status, loaded[first.stream_id].error) == (Status.PENDING, None)
    assert loaded[first.stream_id].last_update_time == 1_800_000_001.0
    assert (loaded[second.stream_id].status, loaded[second.stream_id].error) == (
        Status.FAILURE,
        "timeout: gave up",
    )
    assert loaded[second.stream_id].name == second.name  # a status write changes nothing else


async def test_a_deleted_stream_is_gone_and_the_others_stay(
    backend: Backend, store: StreamStore, tmp_path: Path
) -> None:
    for number in (1, 2, 3):
        await store.insert(record(number))
    await store.delete(record(2).stream_id)
    await store.delete(record(9).stream_id)  # deleting what is not there is no error
    loaded = await read_back(backend, store, tmp_path)
    assert [r.stream_id for r in loaded] == [record(1).stream_id, record(3).stream_id]


async def test_after_close_writes_fail_clearly_and_worker_notes_are_dropped(store: StreamStore) -> None:
    await store.insert(record(1))
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError):
        await store.insert(record(2))
    with pytest.raises(StoreError):
        await store.save_status(record(1, status=Status.PAUSE))
    with pytest.raises(StoreError):
        await store.delete(record(1).stream_id)
    store.note_status(record(1, status=Status.DONE))  # never raises: a worker may outlive the store


async def test_writes_do_not_block_the_event_loop(store: StreamStore) -> None:
    # Ticks of the loop while 20 durable writes run: a store that blocked would give none.
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        await asyncio.gather(*(store.insert(record(n)) for n in range(20)))
    finally:
        task.cancel()
    assert ticks > 0
    assert len(store.load()) == 20
