"""An asyncio event loop in a thread of its own, for clients whose latency must not depend on the
core's loop (the database: status writes, lease renewals) and vice versa.

The core's loop carries frames, batching and the API; a renewal that waited behind a burst of
frame work could let a lease expire, and a slow database must never delay a frame. Calls cross
over with :meth:`call` (blocking: start-up and tests) or :meth:`run` (awaited from another loop).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run on this loop and wait, from a thread that is not this loop's."""
        return self.submit(coroutine).result()

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run on this loop, awaited from another one."""
        return await asyncio.wrap_future(self.submit(coroutine))

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(callback, *args)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop and its thread; what is still scheduled on it is dropped."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=timeout)
        if not self._thread.is_alive():
            self.loop.close()
