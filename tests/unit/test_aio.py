"""wait_within: a bounded wait that never swallows the cancellation of the task running it."""

from __future__ import annotations

import asyncio

import pytest

from lva_common.aio import wait_within


async def test_the_result_passes_through_and_none_is_no_limit() -> None:
    assert await wait_within(asyncio.sleep(0, "done"), 1) == "done"
    assert await wait_within(asyncio.sleep(0.01, 7), None) == 7


async def test_expiry_raises_timeout_and_cancels_the_inner_awaitable() -> None:
    inner = asyncio.ensure_future(asyncio.sleep(10))
    with pytest.raises(TimeoutError):
        await wait_within(inner, 0.05)
    assert inner.cancelled()


async def test_a_cancel_as_the_inner_completes_still_ends_the_task() -> None:
    """Python 3.11's asyncio.wait_for returns the inner result here and the loop runs on."""
    ended = 0
    for _ in range(50):
        ready = asyncio.Event()

        async def service(ready: asyncio.Event = ready) -> None:
            while True:
                await wait_within(ready.wait(), 10)
                ready.clear()
                await asyncio.sleep(0.001)

        task = asyncio.create_task(service())
        await asyncio.sleep(0.002)
        ready.set()  # the wait completes in the next iteration, and the cancel lands on it
        await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1)
        if done:
            ended += 1
        else:  # swallowed: stop it for good before failing
            task.cancel()
            await asyncio.wait({task}, timeout=1)
    assert ended == 50
