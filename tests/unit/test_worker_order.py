"""Two frames of a stream in flight: the next frame's inference overlaps, its results keep order.

An isolated unit test (a fake model whose answers the test releases in any order): the
real-stack tests show the events, this one shows the overlap and the ordering it must keep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np

from lva_common.aio import wait_within
from lva_core.analytics.base import Event, InferFn
from lva_core.pipeline.frame import Frame
from lva_core.pipeline.settings import StreamSettings
from lva_core.pipeline.worker import StreamWorker
from lva_core.streams.record import StreamRecord
from lva_core.streams.spec import Autorestart, SourceData
from lva_core.streams.state import Status

STREAM = "00000000-0000-4000-8000-000000000001"


class GatedModel:
    """infer() is recorded when called and answers when the test releases that frame."""

    def __init__(self) -> None:
        self.called: list[int] = []
        self.gates: dict[int, asyncio.Event] = {}

    async def infer(
        self, role: str, inputs: Mapping[str, np.ndarray[Any, Any]]
    ) -> dict[str, np.ndarray[Any, Any]]:
        number = int(inputs["IMAGE"][0, 0, 0])
        self.called.append(number)
        gate = self.gates.setdefault(number, asyncio.Event())
        await gate.wait()
        return {"VALUE": np.array([number])}


class OrderedAnalytic:
    """Records the order in which results reach its state; one event per frame."""

    name = "ordered"
    version = "1"
    description = "test"
    roles: Mapping[str, str] = {"model": "any"}

    def __init__(self) -> None:
        self.seen: list[int] = []

    def start(self, stream_id: str, parameters: Mapping[str, Any]) -> list[int]:
        return self.seen

    async def process(self, frame: Frame, state: list[int], infer: InferFn) -> list[Event]:
        outputs = await infer("model", {"IMAGE": frame.image})
        state.append(int(outputs["VALUE"][0]))
        return [{"frame_number": frame.frame_number}]

    def stop(self, state: list[int]) -> list[Event]:
        return []


def frame(number: int) -> Frame:
    image = np.full((2, 2, 3), number, np.uint8)
    return Frame(STREAM, image, number, number / 25, 0.0, (2, 2))


def worker(published: list[int]) -> StreamWorker:
    record = StreamRecord(
        stream_id=STREAM,
        account_id="",
        name="",
        description="",
        data=SourceData(reference="x.mp4", kind="videofile"),
        analytics=[],
        autorestart=Autorestart(),
        status=Status.IN_PROGRESS,
    )

    class Reporter:
        def publish(self, record: StreamRecord, results: Mapping[str, Any]) -> None:
            published.append(int(results["ordered"]["frame_number"]))

        def set_status(self, record: StreamRecord, status: Status, error: str | None) -> None:
            pass

    return StreamWorker(record, [], Reporter(), StreamSettings.from_config({}))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_the_next_frame_is_sent_early_but_its_results_wait_their_turn() -> None:
    model, analytic, published = GatedModel(), OrderedAnalytic(), list[int]()
    engine = worker(published)
    states = [("ordered", analytic, analytic.start(STREAM, {}), model.infer)]
    first = asyncio.create_task(engine._analyse(frame(0), states, None))  # type: ignore[arg-type]
    second = asyncio.create_task(engine._analyse(frame(1), states, first))  # type: ignore[arg-type]
    await settle()
    assert model.called == [0, 1]  # the second frame's inference left before the first came back
    model.gates[1].set()  # and its answer comes first...
    await settle()
    assert analytic.seen == [] and published == []  # ...but waits for the first frame
    model.gates[0].set()
    await asyncio.gather(first, second)
    assert analytic.seen == [0, 1]
    assert published == [0, 1]
    assert engine.record.statistics.frames_processed == 2


async def test_a_failed_previous_frame_does_not_hold_the_next_one() -> None:
    model, analytic, published = GatedModel(), OrderedAnalytic(), list[int]()
    engine = worker(published)
    states = [("ordered", analytic, analytic.start(STREAM, {}), model.infer)]

    async def crashes() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(crashes())
    await asyncio.gather(failed, return_exceptions=True)
    model.gates[5] = asyncio.Event()
    model.gates[5].set()
    await wait_within(engine._analyse(frame(5), states, failed), 5)  # type: ignore[arg-type]
    assert analytic.seen == [5] and published == [5]
