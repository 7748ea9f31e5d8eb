"""47007's in-queue deadline (docs/inference.md): an item whose deadline passes while it waits in
the batcher's queue fails with 47007, and is never sent to Triton late.

The batcher has one slot, held by a first batch at a gate in front of the real client, so the
second item can only wait; Triton's own statistics then show which items it really ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from lva_common.aio import wait_within
from lva_core.inference.batcher import ModelBatcher
from lva_core.inference.client import InferenceError, TritonClient
from lva_core.inference.model_info import ModelInfo
from lva_testkit.stack import Service

MODEL = "frame_stats"


class GatedClient(TritonClient):
    """The real client, whose batches wait at ``gate`` before they go: the slot stays busy."""

    def __init__(self, url: str) -> None:
        super().__init__(url, shared_memory=False, pool_bytes=0, timeout=5)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def model_info(self, name: str, refresh: bool = False) -> ModelInfo:
        self.waiting.set()
        await self.gate.wait()
        return await super().model_info(name, refresh)


@pytest.fixture
async def client(triton: Service) -> AsyncIterator[GatedClient]:
    gated = GatedClient(triton.address)
    try:
        yield gated
    finally:
        await gated.close()


async def _inference_count(client: TritonClient) -> int:
    stats = (await client.statistics(MODEL))["model_stats"][0]
    return int(stats.get("inference_count", 0))


async def test_an_item_whose_deadline_passes_in_the_queue_is_47007_and_never_sent(
    client: GatedClient,
) -> None:
    before = await _inference_count(client)  # statistics go around the gate
    batcher = ModelBatcher(client, MODEL, max_batch=8, max_in_flight=1, timeout=30)
    image = np.full((32, 32, 3), 7, np.uint8)
    try:
        first = asyncio.create_task(batcher.infer({"IMAGE": image}))
        await wait_within(client.waiting.wait(), 10)  # the only slot is now taken
        with pytest.raises(InferenceError) as caught:
            await batcher.infer({"IMAGE": image}, timeout=0.3)
        assert caught.value.code == 47007
        assert caught.value.detail.startswith(f"{MODEL}: ")
        client.gate.set()
        outputs = await wait_within(first, 30)
        np.testing.assert_allclose(outputs["MEAN_RGB"], [7, 7, 7])
        # A later item goes at once: the late one left no trace in the queue.
        again = await wait_within(batcher.infer({"IMAGE": image}), 30)
        np.testing.assert_allclose(again["MEAN_RGB"], [7, 7, 7])
    finally:
        client.gate.set()
        await batcher.close()

    async def counted() -> int:
        return await _inference_count(client) - before

    # Triton updates its statistics just after it answers: wait for the two that were sent.
    deadline = asyncio.get_running_loop().time() + 10
    while (sent := await counted()) < 2:
        assert asyncio.get_running_loop().time() < deadline, f"Triton counted {sent}"
        await asyncio.sleep(0.1)
    assert sent == 2  # the first item and the later one; the expired one never reached Triton
