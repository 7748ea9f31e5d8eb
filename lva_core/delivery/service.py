"""Delivery: from an analytic's event to every callback of its stream, through the outbox.

``submit`` is called on the event loop for every event, never waits and never raises: it
serialises the LUNA envelope once, appends it to the outbox for each of the analytic's
callbacks (a write queued on the store's own thread) and wakes those lanes. Each lane
(``lane.py``) then delivers on its own task.

Lanes come from two places: the events this core produces, and the outbox itself. At start-up
every lane that still holds events gets a runner, so what a killed core had not delivered goes
out after the restart; in a fleet (``scan``) the same look runs every ``scan_interval``, and
the outbox's claims decide which agent delivers a lane whose producer died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from lva_core.delivery.callbacks import PARAMETER, callback_path
from lva_core.delivery.envelope import encode, envelope
from lva_core.delivery.lane import LaneRunner, LaneStats
from lva_core.delivery.outbox import Entry, Lane, Outbox
from lva_core.delivery.settings import DeliverySettings
from lva_core.delivery.sinks.base import SinkType
from lva_core.streams.record import StreamRecord

log = logging.getLogger("lva_core.delivery")

# A stream by id, wherever it is kept (None: deleted); a fleet reads the shared store.
FindStream = Callable[[str], Awaitable[StreamRecord | None]]


def _callbacks_of(record: StreamRecord) -> list[tuple[int, int, Mapping[str, Any]]]:
    """(analytic index, callback index, callback) of every callback of the stream."""
    found = []
    for i, spec in enumerate(record.analytics):
        for j, callback in enumerate(spec.parameters.get(PARAMETER) or ()):
            found.append((i, j, callback))
    return found


class Delivery:
    def __init__(
        self,
        outbox: Outbox,
        types: Mapping[str, SinkType],
        settings: DeliverySettings,
        find: FindStream,
        shared: bool = False,
    ) -> None:
        self.outbox = outbox
        self.types = dict(types)
        self.settings = settings
        self.find = find
        self.shared = shared  # a fleet's store: other agents' lanes may need taking over
        self.runners: dict[Lane, LaneRunner] = {}
        self._appends: set[asyncio.Task[None]] = set()
        self._scan: asyncio.Task[None] | None = None
        self.closed = False

    # ------------------------------------------------------------------ events in

    def submit(self, record: StreamRecord, analytic: str, event: Mapping[str, Any]) -> None:
        """Queue ``event`` of ``analytic`` for each of that analytic's callbacks in ``record``."""
        if self.closed:
            return
        index = next((i for i, spec in enumerate(record.analytics) if spec.name == analytic), None)
        if index is None:
            return
        callbacks = record.analytics[index].parameters.get(PARAMETER) or ()
        if not callbacks:
            return
        try:
            wrapped = envelope(record.account_id, record.stream_id, analytic, event)
            body = encode(wrapped)
        except (TypeError, ValueError) as exc:
            log.error("event of %s not deliverable (%s)", analytic, exc)
            return
        event_id = str(wrapped["event"]["event_id"])
        created = time.time()
        for j, callback in enumerate(callbacks):
            runner = self._runner(record.stream_id, callback_path(index, j), callback)
            if runner is None:
                continue
            runner.stats.pending += 1
            written = self.outbox.append(
                Entry(runner.lane, event_id, body, created), self.settings.max_pending
            )
            task = asyncio.ensure_future(self._appended(written, runner))
            self._appends.add(task)
            task.add_done_callback(self._appends.discard)

    @staticmethod
    async def _appended(written: Awaitable[int], runner: LaneRunner) -> None:
        runner.appended(await written)

    def _runner(self, stream_id: str, callback: str, config: Mapping[str, Any]) -> LaneRunner | None:
        lane = Lane(stream_id, callback)
        runner = self.runners.get(lane)
        if runner is not None:
            return runner
        sink_type = self.types.get(str(config.get("type")))
        if sink_type is None:  # its plugin is gone since the stream was created
            log.error("stream %s: callback %s has unknown type %r", stream_id, callback, config.get("type"))
            return None
        stats = LaneStats(sink_type.name, sink_type.target(config))
        runner = LaneRunner(lane, sink_type.open(config), stats, self.outbox, self.settings)
        self.runners[lane] = runner
        runner.start()
        return runner

    # ------------------------------------------------------------------ lanes from the outbox

    async def start(self) -> None:
        """Runners for every lane that holds events (a restart's undelivered ones)."""
        await self._adopt(initial=True)
        if self.shared:
            self._scan = asyncio.create_task(self._scan_forever(), name="delivery-scan")

    async def _scan_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.scan_interval)
            try:
                await self._adopt(initial=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down: the next scan tries again
                log.warning("outbox scan failed: %s", exc)

    async def _adopt(self, initial: bool) -> None:
        for lane, count in (await self.outbox.lanes()).items():
            runner = self.runners.get(lane)
            if runner is not None:
                runner.wake()  # an agent that claimed it elsewhere may have given it back
                continue
            record = await self.find(lane.stream_id)
            if record is None:
                dropped = await self.outbox.forget(lane.stream_id)
                log.warning("%d undelivered events of deleted stream %s dropped", dropped, lane.stream_id)
                continue
            config = next(
                (c for i, j, c in _callbacks_of(record) if callback_path(i, j) == lane.callback), None
            )
            if config is None:
                continue
            runner = self._runner(lane.stream_id, lane.callback, config)
            if runner is not None:
                runner.stats.pending = count
                if initial:
                    log.info("stream %s: %d undelivered events for %s", lane.stream_id, count, lane.callback)

    async def forget(self, stream_id: str) -> None:
        """A stream was deleted: its lanes stop and what they still held is dropped (counted)."""
        for lane in [lane for lane in self.runners if lane.stream_id == stream_id]:
            await self.runners.pop(lane).stop()
        with contextlib.suppress(Exception):
            dropped = await self.outbox.forget(stream_id)
            if dropped:
                log.warning("stream %s deleted with %d undelivered events", stream_id, dropped)

    # ------------------------------------------------------------------ statistics

    def statistics(self, record: StreamRecord) -> list[tuple[str, LaneStats]]:
        """(callback path, statistics) of every callback of the stream, in order."""
        shown = []
        for i, j, config in _callbacks_of(record):
            path = callback_path(i, j)
            runner = self.runners.get(Lane(record.stream_id, path))
            if runner is not None:
                shown.append((path, runner.stats))
                continue
            sink_type = self.types.get(str(config.get("type")))
            target = sink_type.target(config) if sink_type is not None else ""
            shown.append((path, LaneStats(str(config.get("type")), target)))
        return shown

    # ------------------------------------------------------------------ shutdown

    async def close(self) -> None:
        """Deliver for up to ``shutdown_grace`` what is pending, then stop; the rest stays queued."""
        if self.closed:
            return
        self.closed = True
        if self._scan is not None:
            self._scan.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scan
        if self._appends:
            await asyncio.gather(*self._appends, return_exceptions=True)
        # Polled: lanes have no "idle" event, and this runs once, at shutdown.
        for _ in range(int(self.settings.shutdown_grace / 0.05)):
            if not any(r.stats.pending and not r.failing for r in self.runners.values()):
                break
            await asyncio.sleep(0.05)
        for runner in list(self.runners.values()):
            await runner.stop()
        self.runners.clear()
        for sink_type in self.types.values():
            with contextlib.suppress(Exception):
                await sink_type.close()
        await self.outbox.close()
