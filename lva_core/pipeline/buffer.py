"""Named buffer strategies between a stream's decoding thread and its analysis task.

- ``drop_oldest`` (live sources): bounded; when full, the oldest frame is dropped and counted,
  so frame age stays bounded when inference is slower than the camera (newest frame wins).
- ``block`` (video files): bounded; the decoder waits, so every sampled frame is analysed.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class BufferStrategy(enum.Enum):
    DROP_OLDEST = "drop_oldest"
    BLOCK = "block"


class FrameBuffer(Generic[T]):
    """Thread-safe producer side (``put`` from the decoding thread), asyncio consumer side."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxlen: int, strategy: BufferStrategy) -> None:
        self._loop = loop
        self._maxlen = maxlen
        self._strategy = strategy
        self._items: deque[T] = deque()
        self._lock = threading.Condition()
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Called from the decoding thread; False once the buffer is closed (the thread should stop)."""
        with self._lock:
            blocking = self._strategy is BufferStrategy.BLOCK
            while blocking and len(self._items) >= self._maxlen and not self._closed:
                self._lock.wait(0.5)
            if self._closed:
                return False
            if len(self._items) >= self._maxlen:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
        self._loop.call_soon_threadsafe(self._ready.set)
        return True

    async def get(self) -> T:
        while True:
            with self._lock:
                if self._items:
                    item = self._items.popleft()
                    self._lock.notify_all()
                    return item
                self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._items.clear()
            self._lock.notify_all()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
