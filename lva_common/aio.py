"""``wait_within``: ``asyncio.wait_for`` without Python 3.11's lost cancellation.

On 3.11, ``asyncio.wait_for`` returns the inner result when the task running it is cancelled
in the same loop iteration as the inner awaitable completes: the cancellation is swallowed
(fixed in 3.12, which reimplements ``wait_for`` on ``asyncio.timeout``). A loop that is
stopped by ``task.cancel(); await task`` then never ends. It hung a delivery lane's
``stop()`` in CI, and every service loop here is stopped that way. ``asyncio.timeout``
tells its own expiry from an outside cancellation, so a cancel always wins.

ruff bans ``asyncio.wait_for`` in this project (pyproject.toml, TID251) in favour of this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """The awaitable's result, or ``TimeoutError`` after ``seconds`` (``None``: no limit).

    The awaitable runs in the caller's task, and is cancelled on expiry as with ``wait_for``.
    """
    async with asyncio.timeout(seconds):
        return await awaitable
