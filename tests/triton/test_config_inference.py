"""The inference keys of the configuration (docs/inference.md), through the core's own ``Inference``
built from a configuration, against the session's real Triton:

- ``triton.batching.max_batch``, ``queue_size`` and ``max_delay_ms``;
- ``triton.shm_pool_mb``: a full pool makes the next request wait for a region (back-pressure).

The batchers' client holds its batches at a gate in front of the real client where a test needs
the model's slots busy: what waits, and what leaves together, is then decided by the
configuration alone, not by how fast this machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import numpy as np
import pytest

from lva_common.aio import wait_within
from lva_core.inference.client import InferenceError, TritonClient
from lva_core.inference.model_info import ModelInfo
from lva_core.inference.service import Inference
from lva_testkit.documented import poll
from lva_testkit.stack import Service

MODEL = "frame_stats"
IMAGE = np.full((32, 32, 3), 9, np.uint8)


class GatedClient(TritonClient):
    """The real client; each batch waits at ``gate`` before it goes, and is counted on arrival."""

    def __init__(self, url: str) -> None:
        super().__init__(url, shared_memory=False, pool_bytes=0, timeout=5)
        self.gate = asyncio.Event()
        self.arrived = 0

    async def model_info(self, name: str, refresh: bool = False) -> ModelInfo:
        self.arrived += 1
        await self.gate.wait()
        return await super().model_info(name, refresh)


def _config(triton: Service, **batching: Any) -> dict[str, Any]:
    return {"triton": {"url": triton.address, "shared_memory": "none", "batching": batching}}


@pytest.fixture
async def gated(triton: Service) -> AsyncIterator[GatedClient]:
    client = GatedClient(triton.address)
    try:
        yield client
    finally:
        client.gate.set()
        await client.close()


async def _gated_inference(config: dict[str, Any], client: GatedClient) -> Inference:
    inference = Inference(config)
    await inference.client.close()
    inference.client = client  # the configured batchers, in front of the gate
    return inference


async def _arrivals(client: GatedClient, count: int) -> None:
    async def arrived() -> bool:
        return client.arrived >= count

    await poll(arrived, 10, f"{count} batches at the gate")


async def test_max_batch_bounds_every_request(triton: Service, gated: GatedClient) -> None:
    inference = await _gated_inference(_config(triton, max_batch=2), gated)
    batcher = inference.batcher(MODEL)
    try:
        # Five items at once while both slots are held: they can only leave two by two.
        senders = [asyncio.ensure_future(batcher.infer({"IMAGE": IMAGE})) for _ in range(5)]
        await _arrivals(gated, 2)
        gated.gate.set()
        results = await wait_within(asyncio.gather(*senders), 30)
    finally:
        await inference.close()
    assert all(np.allclose(r["MEAN_RGB"], [9, 9, 9]) for r in results)
    assert sorted(batcher.stats.sizes) == [1, 2, 2]


async def test_a_full_queue_pushes_back_on_the_producer(triton: Service, gated: GatedClient) -> None:
    inference = await _gated_inference(_config(triton, max_batch=1, queue_size=2), gated)
    batcher = inference.batcher(MODEL)
    pending: list[asyncio.Future[Any]] = []
    try:
        for count in (1, 2):  # both slots taken, one item each
            pending.append(asyncio.ensure_future(batcher.infer({"IMAGE": IMAGE})))
            await _arrivals(gated, count)
        # Two more fill the queue of two; the next producer waits to put its item, and its own
        # deadline passes while it waits.
        pending += [asyncio.ensure_future(batcher.infer({"IMAGE": IMAGE})) for _ in range(2)]
        refused = asyncio.ensure_future(batcher.infer({"IMAGE": IMAGE}, timeout=0.5))
        await asyncio.sleep(0)  # one turn of the loop: the producer runs up to where it waits
        assert not refused.done()
        assert batcher._waiting() == 2  # its item is not in the queue: the put itself waits
        with pytest.raises(InferenceError) as caught:
            await refused
        assert caught.value.code == 47007
        assert caught.value.detail == f"{MODEL}: no result within 0.5 s"
        assert not any(f.done() for f in pending)  # the queued ones wait for a slot, not failed
        gated.gate.set()
        await wait_within(asyncio.gather(*pending), 30)
    finally:
        gated.gate.set()
        await inference.close()
    assert batcher.stats.items == 4  # the refused item was never sent


async def test_max_delay_holds_a_batch_that_is_not_full(triton: Service, gated: GatedClient) -> None:
    gated.gate.set()  # no slot is held here: only the delay keeps the first item back
    inference = await _gated_inference(_config(triton, max_batch=2, max_delay_ms=60_000), gated)
    batcher = inference.batcher(MODEL)
    try:
        first = asyncio.ensure_future(batcher.infer({"IMAGE": IMAGE}))
        # A real round trip to Triton: time enough for a batcher that does not linger to send.
        await gated.statistics(MODEL)
        assert gated.arrived == 0 and not first.done()
        second = asyncio.ensure_future(batcher.infer({"IMAGE": IMAGE}))
        # The batch is full now: it leaves without waiting out the minute.
        await wait_within(asyncio.gather(first, second), 30)
    finally:
        await inference.close()
    assert list(batcher.stats.sizes) == [2]


async def _blocked(waiter: Awaitable[Any]) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(waiter)
    done, _ = await asyncio.wait({task}, timeout=1.0)
    assert not done, "the request got a region of a pool that was full"
    return task


async def test_a_full_shared_memory_pool_makes_the_next_request_wait(triton: Service) -> None:
    config = {"triton": {"url": triton.address, "shared_memory": "system", "shm_pool_mb": 1}}
    inference = Inference(config)
    client = inference.client
    assert client.pool is not None and client.pool.max_bytes == 1 << 20
    await inference.start()
    try:
        model = await client.model_info(MODEL)
        big = {"IMAGE": (500, 500, 3)}  # 750,000 bytes: a region of 1 MiB, the whole pool
        held = await client.stage(model, big, 1)
        # Any further request waits, however small, until a region is given back.
        waiting = await _blocked(client.stage(model, {"IMAGE": (8, 8, 3)}, 1))
        await client.release(held)
        staged = await wait_within(waiting, 10)
        assert staged.region is not None
        await client.release(staged)
        # A request larger than the pool can never be served: it fails at once.
        with pytest.raises(ValueError, match="exceeds the shared-memory pool of 1048576"):
            await client.stage(model, {"IMAGE": (1000, 1000, 3)}, 1)
        # And the pool still serves real inference.
        out = await client.infer(MODEL, {"IMAGE": IMAGE[None]})
        np.testing.assert_allclose(out["MEAN_RGB"], [[9, 9, 9]])
        assert sum(r.size for r in client.pool.regions) <= 1 << 20  # never more than the bound
    finally:
        await inference.close()
