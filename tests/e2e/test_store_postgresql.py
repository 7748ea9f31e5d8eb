"""The PostgreSQL stream store: the whole store contract against a real PostgreSQL, plus what only
a database server can do (a second core, a newer schema, a server restart, bad URLs).

The contract's tests are the ones of tests/unit/test_store_contract.py, collected here again
with a backend that is a fresh database of a throw-away cluster (lva_testkit.postgres).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from pathlib import Path

import asyncpg
import grpc
import pytest

from lva.v1 import streams_pb2, streams_pb2_grpc
from lva_common.aio import wait_within
from lva_core.streams.state import Status
from lva_core.streams.store import postgresql, rows
from lva_core.streams.store.base import StoreError
from lva_core.streams.store.factory import open_store
from lva_core.streams.store.postgresql import SCHEMA_VERSION, PostgresStreamStore
from lva_core.streams.store.sqlite import SqliteStreamStore
from lva_testkit.ports import free_port
from lva_testkit.postgres import PostgresCluster, new_cluster
from lva_testkit.stack import Service, start_core
from tests.unit import test_store_contract as contract
from tests.unit.test_store_contract import Backend, record, store  # noqa: F401  (the store fixture)

# The contract's tests, collected in this module, where `backend` is PostgreSQL.
globals().update({name: test for name, test in vars(contract).items() if name.startswith("test_")})


def _database_for(postgres: PostgresCluster, place: Path) -> str:
    """The one database of a test's directory: the same directory reopens the same database."""
    return postgres.database("t_" + hashlib.sha1(str(place).encode()).hexdigest()[:16])


@pytest.fixture
def backend(postgres: PostgresCluster) -> Backend:
    return Backend("postgresql", True, lambda place: PostgresStreamStore(_database_for(postgres, place)))


# ---------------------------------------------------------------- only a server can do these


async def test_the_config_selects_postgresql_and_the_location_hides_the_password(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    url = _database_for(postgres, tmp_path).replace("lva@", "lva:hunter2@")  # trust: any password
    opened = open_store({"streams": {"store": url}})
    try:
        assert isinstance(opened, PostgresStreamStore)
        assert "hunter2" not in opened.location and "***" in opened.location
        assert opened.schema_version() == SCHEMA_VERSION
    finally:
        await opened.close()


@pytest.mark.parametrize(
    ("store_setting", "path"),
    [("sqlite:///var/x.sqlite3", "var/x.sqlite3"), ("sqlite:////tmp/x.sqlite3", "/tmp/x.sqlite3")],
)
def test_sqlite_urls_name_a_file_as_sqlalchemy_does(store_setting: str, path: str) -> None:
    from lva_core.streams.store.factory import sqlite_path

    assert sqlite_path(store_setting) == path


async def test_sqlite_url_opens_the_sqlite_store(tmp_path: Path) -> None:
    opened = open_store({"streams": {"store": f"sqlite:///{tmp_path}/s.sqlite3", "store_path": "ignored"}})
    try:
        assert isinstance(opened, SqliteStreamStore) and opened.location == f"{tmp_path}/s.sqlite3"
    finally:
        await opened.close()


@pytest.mark.parametrize("bad", ["mysql://u:pw@h/db", "redis://h", "not a url", "sqlite:relative.db"])
def test_an_unusable_store_setting_is_refused_without_its_secrets(bad: str) -> None:
    with pytest.raises(StoreError) as caught:
        open_store({"streams": {"store": bad}})
    assert "pw" not in str(caught.value)


async def test_agents_share_one_database_and_hear_each_others_changes(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    # The fleet's store: a stream one agent creates the other reads at once, and the other is
    # woken by the notification of the change (LISTEN lva_streams), with the stream's id.
    url = _database_for(postgres, tmp_path)
    first, second = PostgresStreamStore(url), PostgresStreamStore(url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    second.on_change = lambda stream_id: loop.call_soon_threadsafe(heard.put_nowait, stream_id)
    try:
        second.listen()
        assert await wait_within(heard.get(), 10) == ""  # listening: anything may have changed
        stream = record(1)
        await first.insert(stream)
        assert await wait_within(heard.get(), 10) == stream.stream_id
        stored = await second.fetch(stream.stream_id)
        assert stored is not None and stored.record.name == stream.name
        assert stored.record.owner is not None and stored.record.owner.generation == 0
        assert not stored.owner_alive
        await first.save_status(replace(stream, status=Status.PAUSE))
        assert await wait_within(heard.get(), 10) == stream.stream_id
        paused = await second.fetch(stream.stream_id)
        assert paused is not None and paused.record.status is Status.PAUSE
        assert paused.record.owner is not None and paused.record.owner.generation == 1  # the user's
        await first.delete(stream.stream_id)
        assert await wait_within(heard.get(), 10) == stream.stream_id
        assert await second.fetch(stream.stream_id) is None
    finally:
        await first.close()
        await second.close()


async def test_a_newer_schema_is_refused(postgres: PostgresCluster, tmp_path: Path) -> None:
    url = _database_for(postgres, tmp_path)
    await PostgresStreamStore(url).close()
    admin = await asyncpg.connect(url)
    try:
        await admin.execute("UPDATE lva_schema SET version = $1", SCHEMA_VERSION + 1)
    finally:
        await admin.close()
    with pytest.raises(StoreError, match="written by a newer agent"):
        PostgresStreamStore(url)


async def test_agents_starting_together_migrate_once(postgres: PostgresCluster, tmp_path: Path) -> None:
    # Two stores opening at once on an empty database: the migration lock makes one create the
    # schema and the other find it, not fail on a table the first one just created.
    url = _database_for(postgres, tmp_path)
    loop = asyncio.get_running_loop()
    results = await asyncio.gather(
        loop.run_in_executor(None, PostgresStreamStore, url),
        loop.run_in_executor(None, PostgresStreamStore, url),
        return_exceptions=True,
    )
    opened = [r for r in results if isinstance(r, PostgresStreamStore)]
    refused = [r for r in results if isinstance(r, BaseException)]
    try:
        assert len(opened) == 2 and not refused, results
        assert [each.schema_version() for each in opened] == [SCHEMA_VERSION] * 2
    finally:
        for each in opened:
            await each.close()


async def test_a_missing_database_or_server_is_a_clear_store_error(postgres: PostgresCluster) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        PostgresStreamStore(postgres.url_for("no_such_database"))
    closed_port = free_port()  # nothing listens there
    with pytest.raises(StoreError, match=r"cannot be reached|refused"):
        PostgresStreamStore(f"postgresql://lva:secret@127.0.0.1:{closed_port}/x", connect_timeout=3)


async def test_a_server_restart_costs_no_write(tmp_path: Path) -> None:
    # A cluster of its own: restarting the session's would cut the other tests' stores.
    server = new_cluster()
    server.start()
    try:
        opened = PostgresStreamStore(server.url)
        try:
            await opened.insert(record(1))
            await asyncio.get_running_loop().run_in_executor(None, server.restart)
            # The store's connection died with the server; the next write reconnects once.
            await opened.save_status(record(1, status=Status.PAUSE))
            opened.note_status(record(1, status=Status.PAUSE, error="noted after the restart"))
            await opened.insert(record(2))  # queued after the note: the note is written first
            loaded = opened.load()
        finally:
            await opened.close()
        assert [(r.stream_id, r.status, r.error) for r in loaded] == [
            (record(1).stream_id, Status.PAUSE, "noted after the restart"),
            (record(2).stream_id, Status.PENDING, None),
        ]
    finally:
        server.stop()


async def test_a_core_on_postgresql_keeps_its_streams_over_a_restart(
    postgres: PostgresCluster, triton: Service, log_dir: Path, tmp_path: Path
) -> None:
    env = {"LVA_STREAMS__STORE": _database_for(postgres, tmp_path)}
    request = streams_pb2.CreateStreamRequest(
        name="kept in postgresql",
        data=streams_pb2.StreamData(reference="rtsp://user:pw@127.0.0.1:1/cam"),
        status=streams_pb2.STREAM_STATUS_PAUSE,
    )
    core = start_core(log_dir, triton.address, env)
    try:
        async with grpc.aio.insecure_channel(core.address) as channel:
            created = await streams_pb2_grpc.StreamsServiceStub(channel).CreateStream(request)
    finally:
        core.stop()
    again = start_core(log_dir, triton.address, env)
    try:
        assert "stream store postgresql://***@127.0.0.1" in again.log_text()
        async with grpc.aio.insecure_channel(again.address) as channel:
            stub = streams_pb2_grpc.StreamsServiceStub(channel)
            found = await stub.GetStream(streams_pb2.GetStreamRequest(stream_id=created.stream_id))
    finally:
        again.stop()
    assert found.stream.name == "kept in postgresql"
    assert found.stream.status == streams_pb2.STREAM_STATUS_PAUSE
    assert found.stream.data.reference == "rtsp://***@127.0.0.1:1/cam"


def test_a_core_whose_database_is_unusable_refuses_to_start(
    postgres: PostgresCluster, triton: Service, log_dir: Path
) -> None:
    env = {"LVA_STREAMS__STORE": postgres.url_for("no_such_database").replace("lva@", "lva:hunter2@")}
    with pytest.raises(RuntimeError, match="exited with 1") as caught:
        start_core(log_dir, triton.address, env, timeout=20)
    assert "does not exist" in str(caught.value) and "hunter2" not in str(caught.value)


async def test_a_version_1_database_is_migrated_to_the_last_and_keeps_its_streams(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    # A database as the first PostgreSQL store left it: schema 1 (streams only), one stream.
    url = _database_for(postgres, tmp_path)
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(postgresql._CREATE_VERSION_TABLE)
        for statement in postgresql.MIGRATIONS[0]:
            await admin.execute(statement)
        await admin.execute("INSERT INTO lva_schema (id, version) VALUES (1, 1)")
        marks = ", ".join(f"${n}" for n in range(1, 12))
        version_1_insert = f"INSERT INTO streams ({rows.COLUMNS}) VALUES ({marks})"
        await admin.execute(version_1_insert, *rows.to_row(record(1)))
    finally:
        await admin.close()
    opened = PostgresStreamStore(url)
    try:
        assert opened.schema_version() == SCHEMA_VERSION == 5
        [kept_stream] = opened.load()
        assert contract.kept(kept_stream) == contract.kept(record(1))
    finally:
        await opened.close()
    admin = await asyncpg.connect(url)
    try:
        assert await admin.fetchval("SELECT count(*) FROM agents") == 0  # version 2's table exists
        # Version 3's columns, filled in for the stream that was there: unowned, its analytics named.
        row = await admin.fetchrow("SELECT owner_id, analytic_names FROM streams")
        assert row is not None and row["owner_id"] is None and row["analytic_names"] == ["people_counter"]
        assert await admin.fetchval("SELECT count(*) FROM outbox") == 0  # version 5's table exists
    finally:
        await admin.close()
