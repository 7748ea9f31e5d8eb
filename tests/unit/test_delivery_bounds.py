"""A receiver that never answers leaves the core's memory and its outbox file bounded.

The delivery service on a real SQLite file store, fed thousands of events for a callback whose
sink always fails: the outbox keeps ``max_pending`` of them (the newest), the rest are counted
as dropped, the file stops growing once its pages are reused, and the process holds no more
Python memory after the third thousand than after the first.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from lva_core.delivery.outbox import Lane
from lva_core.delivery.service import Delivery
from lva_core.delivery.settings import DeliverySettings
from lva_core.delivery.sinks.base import DeliveryError, Message
from lva_core.delivery.sqlite_outbox import SqliteOutbox
from lva_core.streams.record import StreamRecord
from lva_core.streams.spec import AnalyticSpec, Autorestart, SourceData
from lva_core.streams.state import Status
from lva_core.streams.store.sqlite import SqliteStreamStore

BOUND = 50
ROUNDS, PER_ROUND = 3, 2000


class DeadSink:
    async def send(self, message: Message) -> None:
        raise DeliveryError("connection refused")

    async def close(self) -> None:
        return None


class DeadSinkType:
    name = "dead"
    secrets: tuple[str, ...] = ()

    def schema(self) -> dict[str, Any]:
        return {"type": "object"}

    def check(self, callback: Mapping[str, Any], path: str) -> None:
        return None

    def hosts(self, callback: Mapping[str, Any]) -> list[str]:
        return []

    def target(self, callback: Mapping[str, Any]) -> str:
        return "nowhere"

    def open(self, callback: Mapping[str, Any]) -> DeadSink:
        return DeadSink()

    async def close(self) -> None:
        return None


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("streams.sqlite3*"))


def _record() -> StreamRecord:
    return StreamRecord(
        stream_id="0b8f3c1e-5d2a-4e7b-9c1d-2f3a4b5c6d7e",
        account_id="",
        name="bounded",
        description="",
        data=SourceData(reference="rtsp://camera/x", kind="stream"),
        analytics=[AnalyticSpec("people_counter", {"callbacks": [{"type": "dead"}]})],
        autorestart=Autorestart(restart=1, attempt_count=3, delay=1.0),
        status=Status.IN_PROGRESS,
    )


async def test_a_dead_receiver_leaves_memory_and_disk_bounded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "streams.sqlite3"
    store = SqliteStreamStore(str(path))
    record = _record()

    async def find(stream_id: str) -> StreamRecord | None:
        return record if stream_id == record.stream_id else None

    settings = DeliverySettings(max_pending=BOUND, initial_backoff=0.01, max_backoff=0.05, scan_interval=0.05)
    delivery = Delivery(SqliteOutbox(store), {"dead": DeadSinkType()}, settings, find)
    await delivery.start()
    pad = "x" * 2000  # a crowd event with its coordinates is of this order
    sizes: list[int] = []
    memory: list[int] = []
    tracemalloc.start()
    try:
        for round_ in range(ROUNDS):
            for i in range(PER_ROUND):
                delivery.submit(record, "people_counter", {"event_id": f"{round_}-{i}", "pad": pad})
            while delivery._appends:  # every append durable
                await asyncio.sleep(0.01)
            gc.collect()
            memory.append(tracemalloc.get_traced_memory()[0])
            sizes.append(await asyncio.to_thread(_size, tmp_path))
    finally:
        tracemalloc.stop()
    (stats,) = [s for _, s in delivery.statistics(record)]
    assert (stats.pending, stats.dropped, stats.delivered) == (BOUND, ROUNDS * PER_ROUND - BOUND, 0)
    assert stats.failed >= 1 and stats.last_error == "connection refused"
    runner = delivery.runners[Lane(record.stream_id, "analytics[0].parameters.callbacks[0]")]
    assert runner.task is not None and not runner.task.done()  # still retrying, not given up
    await delivery.close()
    await store.close()
    with sqlite3.connect(path) as db:
        kept = [row[0] for row in db.execute("SELECT event_id FROM outbox ORDER BY seq")]
    assert kept == [f"{ROUNDS - 1}-{i}" for i in range(PER_ROUND - BOUND, PER_ROUND)]  # the newest
    # The file and the memory after the third round are those after the first (small slack
    # for the allocator and SQLite's page cache).
    assert sizes[-1] <= sizes[0] * 1.2 + 65536, sizes
    assert memory[-1] - memory[0] < 512 * 1024, memory
    # And the log says so once, not once per event.
    drops = [r.getMessage() for r in caplog.records if "undelivered events dropped" in r.getMessage()]
    assert drops == [f"callback analytics[0].parameters.callbacks[0]: 1 undelivered events dropped "
                     f"(the outbox holds delivery.max_pending ({BOUND}))"]  # fmt: skip
