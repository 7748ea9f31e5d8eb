"""Per-stream fan-out with a bounded queue per subscriber.

Publishing never waits: a subscriber that reads too slowly loses its OLDEST messages, and the
next message it reads tells it how many it lost. One slow subscriber therefore never slows the
stream or the other subscribers. Transports (the gRPC watch, and the WebSocket through it) are
subscribers like any other.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from lva_core.events.messages import StreamEvent


@dataclass
class Delivery:
    message: StreamEvent
    lost: int  # messages dropped for this subscriber since the previous delivery


class Subscription:
    def __init__(self, stream_id: str, maxlen: int) -> None:
        self.stream_id = stream_id
        self.maxlen = maxlen
        self._queue: deque[StreamEvent] = deque()
        self._lost = 0
        self.lost_total = 0
        self._ready = asyncio.Event()
        self.closed = False

    def push(self, message: StreamEvent) -> None:
        if self.closed:
            return
        if len(self._queue) >= self.maxlen:
            self._queue.popleft()
            self._lost += 1
            self.lost_total += 1
        self._queue.append(message)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self) -> Delivery | None:
        """The next message, or None once the subscription is closed and drained."""
        while not self._queue:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        lost, self._lost = self._lost, 0
        return Delivery(self._queue.popleft(), lost)


class EventBus:
    def __init__(self, queue_size: int = 256) -> None:
        self.queue_size = queue_size
        self._subscribers: dict[str, set[Subscription]] = {}
        self.published = 0
        self.dropped = 0

    def subscribe(self, stream_id: str) -> Subscription:
        subscription = Subscription(stream_id, self.queue_size)
        self._subscribers.setdefault(stream_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.dropped += subscription.lost_total
        subscribers = self._subscribers.get(subscription.stream_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.stream_id]
        subscription.close()

    def dropped_total(self) -> int:
        """Dropped for subscribers that are gone, plus for the live ones so far."""
        live = sum(s.lost_total for subscribers in self._subscribers.values() for s in subscribers)
        return self.dropped + live

    def subscriber_count(self, stream_id: str | None = None) -> int:
        if stream_id is not None:
            return len(self._subscribers.get(stream_id, ()))
        return sum(len(s) for s in self._subscribers.values())

    def publish(self, stream_id: str, message: StreamEvent) -> None:
        self.published += 1
        for subscription in self._subscribers.get(stream_id, ()):
            subscription.push(message)

    def close_stream(self, stream_id: str, final: StreamEvent | None = None) -> None:
        """End every subscription of a stream, after ``final`` (for example, a deleted stream)."""
        for subscription in list(self._subscribers.pop(stream_id, ())):
            if final is not None:
                subscription.push(final)
            subscription.close()
            self.dropped += subscription.lost_total
