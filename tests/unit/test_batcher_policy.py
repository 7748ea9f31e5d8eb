"""The batcher's policy in isolation: when a batch leaves, and what goes in it.

A fake client stands in for Triton here because the policy is about *when* requests are made,
which a real server cannot show without timing; tests/triton/test_inference.py runs the same batcher
against the real Triton.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from lva_common.aio import wait_within
from lva_core.inference.batcher import ModelBatcher
from lva_core.inference.client import Staged
from lva_core.inference.model_info import ModelInfo, TensorInfo

MODEL = ModelInfo(
    name="fake",
    version="1",
    max_batch_size=16,
    inputs=(TensorInfo("IMAGE", "UINT8", (-1, -1, 3)),),
    outputs=(TensorInfo("VALUE", "INT32", (1,)),),
)


class GatedClient:
    """Records each request's items and answers only when the test opens its gate."""

    def __init__(self) -> None:
        self.requests: list[list[int]] = []
        self.gates: list[asyncio.Event] = []
        self.arrived = asyncio.Event()

    async def model_info(self, name: str, refresh: bool = False) -> ModelInfo:
        return MODEL

    async def stage(self, model: ModelInfo, shapes: dict[str, tuple[int, ...]], batch: int) -> Staged:
        return Staged(model, batch, {n: np.empty((batch, *s), np.uint8) for n, s in shapes.items()})

    async def infer_staged(self, staged: Staged, timeout: float | None = None) -> dict[str, Any]:
        values = [int(image[0, 0, 0]) for image in staged.inputs["IMAGE"]]
        self.requests.append(values)
        gate = asyncio.Event()
        self.gates.append(gate)
        self.arrived.set()
        await gate.wait()
        return {"VALUE": np.array([[v] for v in values], np.int32)}

    async def release(self, staged: Staged) -> None:
        pass

    async def next_request(self) -> list[int]:
        await wait_within(self.arrived.wait(), 5)
        self.arrived.clear()
        return self.requests[-1]


def item(value: int, size: int = 4) -> dict[str, np.ndarray[Any, Any]]:
    return {"IMAGE": np.full((size, size, 3), value, np.uint8)}


async def settle() -> None:
    for _ in range(20):  # let every ready task run a step
        await asyncio.sleep(0)


async def test_lone_item_leaves_at_once_and_waiting_items_leave_together() -> None:
    client = GatedClient()
    batcher = ModelBatcher(client, "fake", max_batch=8, max_delay=0, max_in_flight=1)  # type: ignore[arg-type]
    try:
        first = asyncio.create_task(batcher.infer(item(1)))
        # Sent alone with nothing else queued: no waiting for company that is not coming.
        assert await client.next_request() == [1]
        # The only slot is busy: these three wait, then leave as one batch, in order.
        rest = [asyncio.create_task(batcher.infer(item(v))) for v in (2, 3, 4)]
        await settle()
        assert client.requests == [[1]]
        client.gates[0].set()
        assert await client.next_request() == [2, 3, 4]
        client.gates[1].set()
        results = await asyncio.gather(first, *rest)
        assert [int(r["VALUE"][0]) for r in results] == [1, 2, 3, 4]
        assert list(batcher.stats.sizes) == [1, 3]
    finally:
        await batcher.close()


async def test_batches_are_capped_and_other_shapes_wait_their_turn() -> None:
    client = GatedClient()
    batcher = ModelBatcher(client, "fake", max_batch=2, max_delay=0, max_in_flight=1)  # type: ignore[arg-type]
    try:
        blocker = asyncio.create_task(batcher.infer(item(9)))
        await client.next_request()
        tasks = [
            asyncio.create_task(batcher.infer(item(v, size))) for v, size in ((1, 4), (2, 8), (3, 4), (4, 4))
        ]
        await settle()
        for expected in ([1, 3], [2], [4]):  # shape 8 is held back, not reordered behind later items
            client.gates[-1].set()
            assert await client.next_request() == expected
        client.gates[-1].set()
        await asyncio.gather(blocker, *tasks)
    finally:
        await batcher.close()


async def test_linger_waits_for_a_full_batch_when_asked() -> None:
    client = GatedClient()
    # A lingering batcher (max_delay) holds a lone item until the batch fills up.
    batcher = ModelBatcher(client, "fake", max_batch=2, max_delay=30, max_in_flight=1)  # type: ignore[arg-type]
    try:
        first = asyncio.create_task(batcher.infer(item(1)))
        await settle()
        assert client.requests == []
        second = asyncio.create_task(batcher.infer(item(2)))
        assert await client.next_request() == [1, 2]
        client.gates[0].set()
        await asyncio.gather(first, second)
    finally:
        await batcher.close()


async def test_an_item_whose_caller_gave_up_is_not_sent() -> None:
    client = GatedClient()
    batcher = ModelBatcher(client, "fake", max_batch=8, max_delay=0, max_in_flight=1)  # type: ignore[arg-type]
    try:
        blocker = asyncio.create_task(batcher.infer(item(1)))
        await client.next_request()
        gone = asyncio.create_task(batcher.infer(item(2)))
        kept = asyncio.create_task(batcher.infer(item(3)))
        await settle()
        gone.cancel()
        await settle()
        client.gates[0].set()
        assert await client.next_request() == [3]
        client.gates[1].set()
        await asyncio.gather(blocker, kept)
        with pytest.raises(asyncio.CancelledError):
            await gone
    finally:
        await batcher.close()
