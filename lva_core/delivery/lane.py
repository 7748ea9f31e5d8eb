"""One lane's delivery loop: one callback of one stream, one event at a time, in order.

The loop reads the oldest undelivered events from the outbox, sends each until its receiver
takes it (capped exponential backoff between attempts), and only then removes it (``ack``):
a kill at any moment loses nothing, and at worst sends the last event again, with the same
``event_id``. Each lane is a task of its own, so a receiver that hangs or fails holds up only
its own lane: never the frames, other streams, or other callbacks of the same stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from lva_common.aio import wait_within
from lva_core.delivery.outbox import Lane, Outbox, Pending
from lva_core.delivery.settings import DeliverySettings
from lva_core.delivery.sinks.base import DeliveryError, Message, Sink
from lva_core.metrics.instruments import DELIVERY_ATTEMPTS, DELIVERY_LATENCY

log = logging.getLogger("lva_core.delivery")

# The longest one send may take, whatever its sink: the shipped sinks time out on their own
# (at most 60 s); this keeps a plugin's send that never returns from holding its lane forever.
SEND_TIMEOUT = 120.0
# Seconds between two log lines about one lane's dropped events (they are counted regardless).
DROP_LOG_INTERVAL = 60.0


@dataclass
class LaneStats:
    """What GET /1/streams/{id} and /metrics show per callback (since this core started)."""

    kind: str
    target: str
    delivered: int = 0
    pending: int = 0
    failed: int = 0
    dropped: int = 0
    last_error: str | None = None


class LaneRunner:
    def __init__(
        self, lane: Lane, sink: Sink, stats: LaneStats, outbox: Outbox, settings: DeliverySettings
    ) -> None:
        self.lane = lane
        self.sink = sink
        self.stats = stats
        self.outbox = outbox
        self.settings = settings
        self.task: asyncio.Task[None] | None = None
        self.failing = False  # the last attempt failed (last_error stays as history)
        self._unlogged_drops = 0
        self._drops_logged_at: float | None = None
        self._wake = asyncio.Event()
        self._claimed = False

    # ------------------------------------------------------------------ from the service

    def start(self) -> None:
        self.task = asyncio.create_task(
            self._run(), name=f"delivery:{self.lane.stream_id}:{self.lane.callback}"
        )

    def appended(self, dropped: int) -> None:
        """An append of this lane is durable (``dropped``: oldest removed by the bound; -1 failed)."""
        if dropped < 0:
            self.stats.pending = max(0, self.stats.pending - 1)
            self.stats.dropped += 1
            self.stats.last_error = "the outbox could not store the event"
        elif dropped:
            self.stats.pending = max(0, self.stats.pending - dropped)
            self.stats.dropped += dropped
            self._log_drops(dropped, f"the outbox holds delivery.max_pending ({self.settings.max_pending})")
        self._wake.set()

    def _log_drops(self, count: int, why: str) -> None:
        """Drops are logged at most once a minute per lane, with how many since the last line:
        a dead receiver of a busy stream drops one event per event, and the log must not."""
        self._unlogged_drops += count
        now = time.monotonic()
        if self._drops_logged_at is not None and now - self._drops_logged_at < DROP_LOG_INTERVAL:
            return
        log.warning(
            "callback %s: %d undelivered events dropped (%s)", self.lane.callback, self._unlogged_drops, why
        )
        self._unlogged_drops, self._drops_logged_at = 0, now

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        if self._claimed:
            self._claimed = False
            with contextlib.suppress(Exception):
                await self.outbox.release(self.lane)
        await self.sink.close()

    # ------------------------------------------------------------------ the loop

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await wait_within(self._wake.wait(), seconds)

    async def _run(self) -> None:
        settings = self.settings
        while True:
            try:
                # Every round, not once: in a fleet a claim ends with its database session
                # (a restart of the server), and then another agent may take the lane.
                self._claimed = await self.outbox.claim(self.lane)
                if not self._claimed:  # another agent delivers this lane now
                    await asyncio.sleep(settings.scan_interval)
                    continue
                self._wake.clear()  # before reading: an append from now on wakes the next wait
                expired = await self.outbox.expire(self.lane, time.time() - settings.max_age)
                if expired:
                    self._dropped_by_age(expired)
                batch = await self.outbox.pending(self.lane, 0, settings.batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: try again later, lose nothing
                self.stats.last_error = f"outbox: {exc}"[:300]
                await asyncio.sleep(settings.scan_interval)
                continue
            if not batch:
                await self._sleep(settings.scan_interval)
                continue
            for item in batch:
                if not await self._deliver(item):
                    break  # expired while it was retried; read again
                try:
                    await self.outbox.ack(self.lane, item.seq)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Delivered but not removed: sent again later (same event_id), never lost.
                    self.stats.last_error = f"outbox: {exc}"[:300]
                    break

    def _dropped_by_age(self, count: int) -> None:
        self.stats.dropped += count
        self.stats.pending = max(0, self.stats.pending - count)
        self._log_drops(count, f"older than delivery.max_age ({self.settings.max_age:g} s)")

    async def _deliver(self, item: Pending) -> bool:
        """Send until accepted (True), or until the event outlived max_age (False, dropped)."""
        attempt = 0
        message = Message(item.event_id, item.body)
        while True:
            try:
                await wait_within(self.sink.send(message), SEND_TIMEOUT)
            except DeliveryError as exc:
                error = str(exc)
            except TimeoutError:
                error = f"the sink did not return within {SEND_TIMEOUT:g} s"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a sink's bug must not end the lane
                if attempt == 0:  # the traceback once per event, not once per retry
                    log.exception("callback %s: the sink failed", self.lane.callback)
                error = f"{type(exc).__name__}: {exc}"[:300]
            else:
                self.failing = False
                self._accepted(item, attempt)
                return True
            self.failing = True
            attempt += 1
            self.stats.failed += 1
            self.stats.last_error = error
            DELIVERY_ATTEMPTS.labels(self.stats.kind, "failed").inc()
            if attempt == 1:
                log.warning("callback %s (%s): %s; retrying", self.lane.callback, self.stats.target, error)
            if item.created < time.time() - self.settings.max_age:
                with contextlib.suppress(Exception):
                    await self.outbox.ack(self.lane, item.seq)
                self._dropped_by_age(1)
                return False
            await asyncio.sleep(self.settings.backoff(attempt))

    def _accepted(self, item: Pending, failures: int) -> None:
        self.stats.delivered += 1
        self.stats.pending = max(0, self.stats.pending - 1)
        DELIVERY_ATTEMPTS.labels(self.stats.kind, "delivered").inc()
        DELIVERY_LATENCY.labels(self.stats.kind).observe(max(0.0, time.time() - item.created))
        if failures:
            log.info("callback %s: delivering again after %d failed attempts", self.lane.callback, failures)
