"""Stream state survives a restart of the core: the SQLite stream store, alone and in the real stack.

The unit tests open real SQLite files in a temporary directory. The end-to-end test starts its
own core and facade (on the session's real Triton), creates streams over REST (a live RTSP
camera, a paused one, a file that finishes, a failed one, one still reconnecting, a deleted
one), kills the core with SIGKILL and later stops it with SIGTERM, and checks after each
restart on the same store that everything came back as it was, and that the live stream runs
again by itself with events on ``/1/ws``.

Why one file of over 400 lines: the SQLite store's own tests and the restart end-to-end test
share one record builder and one way of reading the file back. What every store must do is in
tests/unit/test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets

from lva.v1 import streams_pb2
from lva_common.config import load_config
from lva_common.errors import INTERNAL, LunaError
from lva_core.api.convert import source_data_to_proto, stream_spec_from_request, stream_to_proto
from lva_core.events.bus import EventBus
from lva_core.streams.manager import StreamManager
from lva_core.streams.record import StreamRecord
from lva_core.streams.spec import AnalyticSpec, Autorestart, Rate, Roi, SourceData
from lva_core.streams.state import Status
from lva_core.streams.store import sqlite as store_module
from lva_core.streams.store.base import StoreError
from lva_core.streams.store.factory import store_path
from lva_core.streams.store.sqlite import MEMORY, SCHEMA_VERSION
from lva_core.streams.store.sqlite import SqliteStreamStore as StreamStore
from lva_testkit.clips import clip
from lva_testkit.rtsp_server import RtspServer
from lva_testkit.stack import Service, start_core, start_facade
from lva_testkit.streams import EVERY_FRAME_COUNTER, create, get, patch, wait_status

# ---------------------------------------------------------------------------------------- units


def _record(stream_id: str = "7f1d4c8e-1b7a-4c1e-9a47-1d9e0f6b2a10", **changes: Any) -> StreamRecord:
    """A stream with every field set to something other than its default."""
    data = SourceData(
        reference="rtsp://admin:hunter2@10.0.0.7:554/live?token=abc",
        kind="stream",
        rotation=270,
        roi=Roi(x=1, y=2, width=30, height=40, mode="percent"),
        rate=Rate(period=2.5, unit="second"),
    )
    fields: dict[str, Any] = {
        "stream_id": stream_id,
        "account_id": "5b0b7c57-3f3c-4a4e-8f0e-6f2f5d0c9a11",
        "name": "lobby ü",
        "description": "east entrance\nsecond line",
        "data": data,
        "analytics": [
            AnalyticSpec("people_counter", {"probe_count": 2, "rate": {"period": 1.5, "unit": "second"}}),
            AnalyticSpec("human_tracking", {"targets": ["ags", "face"], "strict": True, "roi": None}),
        ],
        "autorestart": Autorestart(restart=1, attempt_count=7, delay=0.25),
        "status": Status.RESTART,
        "error": "timeout: no data for 5 s",
        "create_time": 1_700_000_000.123456,
        "last_update_time": 1_700_000_123.654321,
    }
    fields.update(changes)
    return StreamRecord(**fields)


def _fields(record: StreamRecord) -> dict[str, Any]:
    """Everything the store keeps, comparable: data and autorestart also as the wire bytes kept."""
    return {
        "stream_id": record.stream_id,
        "account_id": record.account_id,
        "name": record.name,
        "description": record.description,
        "data": record.data,
        "data_wire": source_data_to_proto(record.data).SerializeToString(deterministic=True),
        "analytics": [(a.name, a.parameters) for a in record.analytics],
        "autorestart": record.autorestart,
        "status": record.status,
        "error": record.error,
        "create_time": record.create_time,
        "last_update_time": record.last_update_time,
    }


async def _reopened(path: Path) -> list[StreamRecord]:
    store = StreamStore(str(path))
    try:
        return store.load()
    finally:
        await store.close()


async def test_every_field_round_trips_through_a_reopened_file(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    original = _record()
    other = _record("0c7d9a3e-5e4f-4d58-b8d4-0d7d3a3c2f55", account_id="", error=None, analytics=[])
    store = StreamStore(str(path))
    await store.insert(original)
    await store.insert(other)
    await store.close()
    loaded = await _reopened(path)
    assert [_fields(r) for r in loaded] == [_fields(original), _fields(other)]
    # The credentials are kept (the camera is reopened with them); only the API masks them.
    assert loaded[0].data.reference == "rtsp://admin:hunter2@10.0.0.7:554/live?token=abc"
    assert stream_to_proto(loaded[0]).data.reference == "rtsp://***@10.0.0.7:554/live?token=***"
    assert stream_to_proto(loaded[0]) == stream_to_proto(original)
    assert loaded[0].statistics.frames_decoded == 0


async def test_status_changes_are_kept_in_order_and_a_delete_is_final(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = StreamStore(str(path))
    first, second = (
        _record(status=Status.PENDING, error=None),
        _record("1a2b3c4d-0000-4000-8000-000000000002"),
    )
    await store.insert(first)
    await store.insert(second)
    for status, error in [
        (Status.IN_PROGRESS, None),
        (Status.RESTART, "io_error: x"),
        (Status.FAILURE, "gone"),
    ]:
        first.transition(status, error)
        store.note_status(first)  # queued, not awaited: close() must still write them, in order
    second.transition(Status.PAUSE)
    await store.save_status(second)
    await store.delete(second.stream_id)
    await store.close()
    store.note_status(first)  # after close: ignored, no exception
    loaded = await _reopened(path)
    assert [r.stream_id for r in loaded] == [first.stream_id]
    assert (loaded[0].status, loaded[0].error) == (Status.FAILURE, "gone")
    assert loaded[0].last_update_time == first.last_update_time


async def test_a_new_file_has_the_schema_version_its_mode_and_no_wal_after_close(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "s.sqlite3"  # missing directories are created
    store = StreamStore(str(path))
    assert store.persistent and store.schema_version() == SCHEMA_VERSION == 2
    await store.insert(_record())
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not await asyncio.to_thread(Path(f"{path}-wal").exists)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT status FROM streams").fetchall() == [("restart",)]


async def test_an_older_schema_is_migrated_and_a_newer_one_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.sqlite3"
    store = StreamStore(str(path))
    await store.insert(_record())
    await store.close()
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(
        store_module,
        "MIGRATIONS",
        {**store_module.MIGRATIONS, 2: ["ALTER TABLE streams ADD COLUMN note TEXT"]},
    )
    upgraded = StreamStore(str(path))
    assert upgraded.schema_version() == 3
    assert [r.stream_id for r in upgraded.load()] == [_record().stream_id]
    await upgraded.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert "note" in [row[1] for row in db.execute("PRAGMA table_info(streams)")]
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 2)
    with pytest.raises(StoreError, match="schema version 3, written by a newer agent"):
        StreamStore(str(path))


async def test_a_version_1_file_gains_the_outbox(tmp_path: Path) -> None:
    """A file written before events went out (schema 1: streams only) keeps its streams."""
    path = tmp_path / "s.sqlite3"
    store = StreamStore(str(path))
    await store.insert(_record())
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("DROP TABLE outbox")
        db.execute("PRAGMA user_version = 1")
    upgraded = StreamStore(str(path))
    assert upgraded.schema_version() == 2
    assert [r.stream_id for r in upgraded.load()] == [_record().stream_id]
    await upgraded.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


async def test_unusable_files_fail_with_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not SQLite" * 64)
    with pytest.raises(StoreError, match="not a valid stream store"):
        StreamStore(str(garbage))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open the stream store"):
        StreamStore(str(blocker / "s.sqlite3"))  # its directory cannot exist
    path = tmp_path / "s.sqlite3"
    first = StreamStore(str(path))
    with pytest.raises(StoreError, match="in use by another process"):
        StreamStore(str(path))
    await first.insert(_record())
    await first.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE streams SET status = 'sleeping'")
    with pytest.raises(StoreError, match=f"unreadable stream {_record().stream_id}"):
        await _reopened(path)


async def test_store_path_from_the_config() -> None:
    assert store_path(load_config(environ={})) == "var/streams.sqlite3"
    assert store_path(load_config(environ={"LVA_STREAMS__STORE_PATH": ""})) == MEMORY
    assert store_path({"streams": {"store_path": ":memory:"}}) == MEMORY
    with pytest.raises(StoreError, match="must be a string"):
        store_path(load_config(environ={"LVA_STREAMS__STORE_PATH": ":memory:"}))  # YAML: a mapping
    memory = StreamStore(store_path({"streams": {"store_path": ""}}))
    assert not memory.persistent
    await memory.insert(_record())
    assert len(memory.load()) == 1
    await memory.close()


def _manager(store: StreamStore) -> StreamManager:
    # load() needs no inference and no real analytics: only the catalogue's names.
    catalogue: Any = {"people_counter": object(), "human_tracking": object()}
    return StreamManager(load_config(environ={}), None, EventBus(16), catalogue, store)  # type: ignore[arg-type]


async def test_loading_resumes_active_streams_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = StreamStore(str(path))
    stored = {
        "pending": _record("00000000-0000-4000-8000-000000000001", status=Status.PENDING, error=None),
        "in_progress": _record("00000000-0000-4000-8000-000000000002", status=Status.IN_PROGRESS, error=None),
        "restart": _record("00000000-0000-4000-8000-000000000003", status=Status.RESTART),
        "pause": _record("00000000-0000-4000-8000-000000000004", status=Status.PAUSE, error=None),
        "done": _record("00000000-0000-4000-8000-000000000005", status=Status.DONE, error=None),
        "failure": _record("00000000-0000-4000-8000-000000000006", status=Status.FAILURE, error="gone"),
        "unknown": _record(
            "00000000-0000-4000-8000-000000000007",
            status=Status.IN_PROGRESS,
            analytics=[AnalyticSpec("retired_plugin", {})],
        ),
    }
    for record in stored.values():
        await store.insert(record)
    await store.close()

    manager = _manager(StreamStore(str(path)))
    manager.load()
    loaded = {name: manager.records[r.stream_id] for name, r in stored.items()}
    assert list(manager.records) == [r.stream_id for r in stored.values()]  # creation order
    got = {name: (r.status.value, r.error) for name, r in loaded.items()}
    assert got == {
        "pending": ("pending", None),
        "in_progress": ("pending", None),
        "restart": ("pending", None),
        "pause": ("pause", None),
        "done": ("done", None),
        "failure": ("failure", "gone"),
        "unknown": ("failure", "analytic retired_plugin is not available in this core"),
    }
    assert loaded["done"].last_update_time == stored["done"].last_update_time
    assert loaded["restart"].last_update_time > stored["restart"].last_update_time
    assert not manager.workers  # resume() starts them, once Triton is up
    # Resuming the stream whose analytic is gone is a clear conflict, not a crash, and changes nothing.
    with pytest.raises(LunaError) as refused:
        await manager.update(stored["unknown"].stream_id, Status.PENDING)
    assert refused.value.code == 47005 and "retired_plugin" in refused.value.detail
    assert loaded["unknown"].status is Status.FAILURE and not manager.workers
    await manager.close()
    # What load() changed is in the file too.
    again = {r.stream_id: (r.status.value, r.error) for r in await _reopened(path)}
    assert again == {stored[name].stream_id: value for name, value in got.items()}


async def test_a_create_the_store_cannot_keep_fails_and_registers_nothing(tmp_path: Path) -> None:
    store = StreamStore(str(tmp_path / "s.sqlite3"))
    manager = _manager(store)
    await store.close()  # every write fails from now on
    request = streams_pb2.CreateStreamRequest(
        data=streams_pb2.StreamData(reference="rtsp://127.0.0.1:1/x"), status=streams_pb2.STREAM_STATUS_PAUSE
    )
    with pytest.raises(LunaError) as raised:
        await manager.create(stream_spec_from_request(request))
    assert raised.value.spec is INTERNAL and "stream store" in raised.value.detail
    assert manager.records == {}


# ---------------------------------------------------------------------------------- end to end


def _network(name: str, url: str, autorestart: dict[str, Any], **extra: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "description": f"{name} (persistence test)",
        "account_id": "9d3c1f0e-2b1a-4f5e-8d7c-6b5a4f3e2d1c",
        "data": {
            "reference": url,
            "type": "stream",
            "frame_processing": {"rate": {"period": 5, "unit": "frame"}},
        },
        "analytics": EVERY_FRAME_COUNTER,
        "autorestart": autorestart,
    }
    body.update(extra)
    return body


def _settings(stream: dict[str, Any], *dynamic: str) -> dict[str, Any]:
    """A GET body without what may change over a restart: statistics, and ``dynamic``."""
    return {k: v for k, v in stream.items() if k not in {"statistics", *dynamic}}


async def _first_event(uri: str, timeout: float = 60) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first message of /1/ws (the current status) and the first analytics event after it."""
    async with asyncio.timeout(timeout), websockets.connect(uri) as websocket:
        first = json.loads(await websocket.recv())
        while True:
            message = json.loads(await websocket.recv())
            if message["analytics_results"]:
                return first, message


async def _all(http: aiohttp.ClientSession, base_url: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Every stream, once the facade reaches the (restarted) core again: it answers 503 until then."""
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(f"{base_url}/1/streams") as resp:
            if resp.status == 200:
                return list((await resp.json())["streams"])
            assert resp.status == 503 and time.monotonic() < deadline, (resp.status, await resp.text())
        await asyncio.sleep(0.2)


async def test_streams_survive_sigkill_and_sigterm_of_the_core(
    http: aiohttp.ClientSession, triton: Service, tmp_path: Path, nothing_listens: int
) -> None:
    store = tmp_path / "store" / "streams.sqlite3"
    config = tmp_path / "core.yaml"
    # Through a config file, as an operator sets it.
    config.write_text(f"streams:\n  store_path: {json.dumps(str(store))}\n")
    files = json.dumps([str(tmp_path)])
    core_env = {"LVA_CONFIG": str(config), "LVA_STREAMS__ALLOWED_FILE_DIRS": files}
    # The camera is a witness here: should GStreamer's server abort, it comes back by itself.
    camera = RtspServer(clip(tmp_path, "live.mp4", seconds=4.0), tmp_path / "rtsp.log", respawn=True).start()
    core = start_core(tmp_path, triton.address, core_env)
    facade = start_facade(tmp_path, core.address)
    try:
        base_url = f"http://{facade.address}"
        refused = f"rtsp://127.0.0.1:{nothing_listens}/nothing-listens"
        clip_path = clip(tmp_path, "short.mp4", seconds=2.0)
        live_id = await create(
            http, base_url, _network("live", camera.url, {"restart": 1, "attempt_count": 50, "delay": 0.5})
        )
        # The camera's second client connects once the first plays: GStreamer's RTSP server can
        # stall when two clients set up one media at once.
        await wait_status(http, base_url, live_id, {"in_progress"}, 40)
        ids = {
            "live": live_id,
            "paused": await create(http, base_url, _network("paused", camera.url, {"restart": 0})),
            "file": await create(
                http,
                base_url,
                {
                    "name": "file",
                    "data": {"reference": str(clip_path), "type": "videofile"},
                    "analytics": EVERY_FRAME_COUNTER,
                },
            ),
            "failed": await create(http, base_url, _network("failed", refused, {"restart": 0})),
            "retrying": await create(
                http,
                base_url,
                _network("retrying", refused, {"restart": 1, "attempt_count": 1000, "delay": 0.5}),
            ),
        }
        deleted = await create(
            http, base_url, _network("deleted", camera.url, {"restart": 0}, status="pause")
        )
        async with http.delete(f"{base_url}/1/streams/{deleted}") as resp:
            assert resp.status == 204

        await wait_status(http, base_url, ids["paused"], {"in_progress"}, 40)
        assert (await patch(http, base_url, ids["paused"], "pause"))["status"] == "pause"
        await wait_status(http, base_url, ids["file"], {"done"}, 60)
        failed = await wait_status(http, base_url, ids["failed"], {"failure"}, 20)
        assert failed["error"].startswith("connection_refused")
        await wait_status(http, base_url, ids["retrying"], {"restart"}, 20)
        before = {name: await get(http, base_url, stream_id) for name, stream_id in ids.items()}
        assert before["paused"]["status"] == "pause"

        for sig in (signal.SIGKILL, signal.SIGTERM):
            name = signal.Signals(sig).name
            code = core.stop(sig)
            if sig == signal.SIGTERM:
                # A clean stop closes the store: the WAL is checkpointed into the file and removed.
                assert code == 0, core.log_text()[-2000:]
                assert f"stream store {store} closed" in core.log_text()
                assert not await asyncio.to_thread(Path(f"{store}-wal").exists)
            else:
                assert code == -signal.SIGKILL
            started = time.monotonic()
            core = start_core(tmp_path, triton.address, core_env, port=core.port)
            assert f"stream store {store}: {len(ids)} streams loaded" in core.log_text(), name

            listed = await _all(http, base_url)
            assert [s["stream_id"] for s in listed] == list(ids.values()), name  # same ids, same order
            async with http.get(f"{base_url}/1/streams/{deleted}") as resp:
                assert resp.status == 404, f"a deleted stream came back after {name}"
            after = {n: await get(http, base_url, stream_id) for n, stream_id in ids.items()}
            for n in ("paused", "file", "failed"):
                assert _settings(after[n]) == _settings(before[n]), (name, n)
            for n in ("live", "retrying"):
                dynamic = ("status", "error", "last_update_time")
                assert _settings(after[n], *dynamic) == _settings(before[n], *dynamic), (name, n)
            # Finished streams are not run again: their counters stay at 0 in the new process.
            assert after["file"]["statistics"]["frames_decoded"] == 0, name
            assert after["paused"]["statistics"]["frames_decoded"] == 0, name

            # The live camera resumes by itself and its events reach /1/ws again.
            live = await wait_status(http, base_url, ids["live"], {"in_progress"}, 40)
            assert live["error"] is None, name
            first, event = await _first_event(f"ws://{facade.address}/1/ws?stream_id={ids['live']}")
            assert first["stream_status"] == "in_progress", (name, first)
            assert event["stream_status"] == "in_progress" and "people_counter" in event["analytics_results"]
            assert (await get(http, base_url, ids["live"]))["statistics"]["frames_processed"] > 0, name
            retrying = await wait_status(http, base_url, ids["retrying"], {"restart"}, 20)
            assert retrying["statistics"]["reconnects"] >= 1, name  # a new worker, counting from 0
            print(
                f"{name}: the live stream's first event {time.monotonic() - started:.1f} s after the restart"
            )
            assert (await get(http, base_url, ids["paused"]))["status"] == "pause", name
    finally:
        facade.stop()
        core.stop()
        camera.stop()


def test_a_damaged_store_stops_the_core_with_a_clear_message(triton: Service, tmp_path: Path) -> None:
    store = tmp_path / "streams.sqlite3"
    store.write_bytes(b"\x00not a database\x00" * 128)
    with pytest.raises(RuntimeError) as raised:
        start_core(tmp_path, triton.address, {"LVA_STREAMS__STORE_PATH": str(store)})
    message = str(raised.value)
    assert "exited with 1" in message
    assert f"cannot use the stream store {store}" in message and "not a valid stream store" in message
    assert "Traceback" not in message


def test_cores_of_the_test_suite_keep_their_streams_apart(core: Service, log_dir: Path) -> None:
    # The session's core (lva_testkit/stack.py start_core) has a store of its own, in the test's
    # temporary directory, never the repository's var/streams.sqlite3.
    assert core.store_path is not None and core.store_path.parent == log_dir
    assert f"stream store {core.store_path}: " in core.log_text()
    assert "stream store var/" not in core.log_text()
