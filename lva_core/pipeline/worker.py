"""One worker per active stream: open the source, decode in a thread, analyse, publish.

Reconnection lives here: a source that is down at start-up, dies, freezes or ends while live
goes to ``restart`` and is retried with capped exponential backoff under ``autorestart``; when
the attempts run out the stream goes to ``failure`` with the classified error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from lva_common.errors import LunaError
from lva_common.logs import request_id_var, stream_id_var
from lva_core.analytics.base import Analytic, Event, InferFn
from lva_core.images.request import has_images, resolve_images, strip_images
from lva_core.images.store import ImageStore
from lva_core.metrics.instruments import FRAME_ANALYSIS, FRAME_DECODE
from lva_core.pipeline.buffer import BufferStrategy, FrameBuffer
from lva_core.pipeline.frame import Frame
from lva_core.pipeline.pixels import FormatLearner
from lva_core.pipeline.settings import StreamSettings
from lva_core.pipeline.source.errors import SourceError
from lva_core.pipeline.source.reader import VideoSource
from lva_core.pipeline.source.spec import SourceSpec
from lva_core.streams.record import StreamRecord
from lva_core.streams.state import Status

log = logging.getLogger("lva_core.streams")

MAX_BACKOFF = 30.0


class StreamReporter(Protocol):
    """Where a worker reports: the registry records statuses and publishes events."""

    def set_status(self, record: StreamRecord, status: Status, error: str | None) -> None: ...

    def publish(self, record: StreamRecord, results: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class BoundAnalytic:
    """One analytic of one stream: its validated parameters and the models it calls."""

    name: str
    analytic: Analytic
    parameters: dict[str, Any]
    infer: InferFn


def source_spec(record: StreamRecord, settings: StreamSettings) -> SourceSpec:
    data = record.data
    roi = None
    if data.roi is not None and data.roi.width > 0 and data.roi.height > 0:
        roi = (data.roi.x, data.roi.y, data.roi.width, data.roi.height)
    rate = data.rate
    return SourceSpec(
        reference=data.reference,
        kind="stream" if data.live else "videofile",
        rotation=data.rotation,
        roi=roi,
        roi_mode="percent" if data.roi is not None and data.roi.percent else "abs",
        rate_period=(rate.period if rate is not None else 0.0) or 1.0,
        rate_unit="second" if rate is not None and rate.unit == "second" else "frame",
        open_timeout=settings.open_timeout,
        read_timeout=settings.read_timeout,
        probe_duration=settings.probe_duration,
        hwaccel=settings.hwaccel,
    )


def backoff(attempt: int, initial: float) -> float:
    return float(min(MAX_BACKOFF, max(0.05, initial) * 2 ** max(0, attempt - 1)))


class StreamWorker:
    def __init__(
        self,
        record: StreamRecord,
        analytics: list[BoundAnalytic],
        reporter: StreamReporter,
        settings: StreamSettings,
        gate: Callable[[], bool] | None = None,
        images: ImageStore | None = None,
    ) -> None:
        self.record = record
        # Where the events' images go (None: none are kept, the events carry null).
        self.images = images
        # In a fleet: whether the agent's lease still lets it read (checked per frame, in the
        # decoding thread). A process frozen past its lease reads no frame once it wakes, even
        # before its loop has noticed the fence and stopped this worker.
        self.gate = gate
        self.analytics = analytics
        self.reporter = reporter
        self.settings = settings
        self.task: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._connected = False
        # What the stream's models asked for, kept across reconnections (lva_core.pipeline.pixels).
        self.formats = FormatLearner()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"stream:{self.record.stream_id}")

    async def stop(self) -> None:
        self._stop.set()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def _run(self) -> None:
        # The task was created inside the request that started the stream and inherited its
        # request id; the stream's own lines belong to no request.
        request_id_var.set("-")
        stream_id_var.set(self.record.stream_id)
        record = self.record
        live = record.data.live
        attempts = 0
        while True:
            try:
                await self._session(live)
                self.reporter.set_status(record, Status.DONE, None)
                return
            except SourceError as error:
                message = f"{error.kind}: {error}"
                if self._connected:
                    # The source worked until now: a fresh loss gets the whole attempt budget.
                    attempts, self._connected = 0, False
                # Retrying cannot help a codec we lack, nor a file whose bytes are bad: a file does
                # not heal, and a corrupt one would sit in restart through every attempt.
                permanent = error.kind == "unsupported_codec" or (not live and error.kind == "corrupt_data")
                restartable = record.autorestart.restart and not permanent
                if restartable and attempts < record.autorestart.attempt_count:
                    attempts += 1
                    record.statistics.reconnects += 1
                    self.reporter.set_status(record, Status.RESTART, message)
                    delay = backoff(attempts, record.autorestart.delay)
                    log.info("source lost (%s); attempt %d in %.1f s", message, attempts, delay)
                    await asyncio.sleep(delay)
                    continue
                self.reporter.set_status(record, Status.FAILURE, message)
                return
            except Exception:
                log.exception("stream worker crashed")
                self.reporter.set_status(record, Status.FAILURE, "internal error; see the core log")
                return

    async def _session(self, live: bool) -> None:
        """Open, decode and analyse until the source ends (file) or fails (raises SourceError)."""
        record = self.record
        loop = asyncio.get_running_loop()
        source = VideoSource(source_spec(record, self.settings), record.stream_id, self.formats)
        self._stop.clear()
        await asyncio.to_thread(self._open, source)
        strategy = BufferStrategy.DROP_OLDEST if live else BufferStrategy.BLOCK
        buffer: FrameBuffer[Frame | BaseException | None] = FrameBuffer(
            loop, self.settings.buffer_size, strategy
        )
        thread = threading.Thread(
            target=self._decode, args=(source, buffer), name=f"decode:{record.stream_id}", daemon=True
        )
        # Built once per session: per frame the loop only calls into them.
        states = [
            (
                bound.name,
                bound.analytic,
                bound.analytic.start(record.stream_id, bound.parameters),
                bound.infer,
            )
            for bound in self.analytics
        ]
        self.reporter.set_status(record, Status.IN_PROGRESS, None)
        self._connected = True
        # The buffer counts this session's drops; the statistic counts over all sessions.
        dropped_before = record.statistics.frames_dropped
        thread.start()
        # Two frames in flight: while one is post-processed (or waits for its second model), the
        # next one's first inference is already on its way (see _analyse for the ordering).
        previous: asyncio.Task[None] | None = None
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                item = await buffer.get()
                # Before the end marker too: the drops since the last frame taken count as well.
                record.statistics.frames_dropped = dropped_before + buffer.dropped
                if item is None or isinstance(item, BaseException):
                    if previous is not None:
                        await previous  # its events go out before the end (or the error)
                        previous = None
                    if item is None:
                        return
                    raise item
                current = asyncio.create_task(self._analyse(item, states, previous))
                in_flight.add(current)
                current.add_done_callback(in_flight.discard)
                if previous is not None:
                    await previous
                previous = current
        finally:
            for task in list(in_flight):  # stopped, or a frame's analysis crashed: the rest go too
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            self._stop.set()
            source.stop()
            buffer.close()  # what it still holds is discarded, not dropped: it never competed
            record.statistics.frames_dropped = dropped_before + buffer.dropped
            # The thread notices within one frame or one read timeout; don't block the loop on it.
            await asyncio.to_thread(thread.join, self.settings.read_timeout + 1)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(source.close)
            for name, analytic, state, _infer in states:
                for event in analytic.stop(state):
                    await self._with_images(event)
                    self.reporter.publish(record, {name: event})

    async def _with_images(self, event: Event) -> None:
        """The event's image requests become URLs (encoded on the image store's threads, only
        for events that carry one), before anyone sees the event: watchers and callbacks alike."""
        if not has_images(event):
            return
        if self.images is None:
            strip_images(event)
            return
        await resolve_images(event, self.images, self.record.account_id, self.record.stream_id)

    def _open(self, source: VideoSource) -> None:
        source.open()
        if self._stop.is_set():
            # The stream was stopped or deleted while this thread was opening: nobody will
            # consume the source, so close it here rather than leak it.
            source.close()
            raise SourceError("io_error", "stopped while opening")

    def _decode(self, source: VideoSource, buffer: FrameBuffer[Frame | BaseException | None]) -> None:
        stats = self.record.statistics
        base = stats.frames_decoded  # counts accumulate over reconnections

        stats.decode_rate = source.stats.rate  # this session's meter; the last one stops with it

        def sync() -> None:
            stats.frames_decoded = base + source.stats.decoded

        frames = source.frames()
        clock = time.perf_counter
        try:
            while True:
                started = clock()
                frame = next(frames, None)
                if frame is None:
                    break
                FRAME_DECODE.observe(clock() - started)  # the generator's work only, not waits on the buffer
                sync()
                if self.gate is not None and not self.gate():
                    log.warning("lease lost: closing the source before its next frame")
                    self._stop.set()
                    with contextlib.suppress(Exception):
                        frames.close()  # the generator closes its container: the camera's session
                        source.close()  # ends now, not when the loop gets here
                    return
                if self._stop.is_set() or not buffer.put(frame):
                    return
            sync()
            buffer.put(None)
        except SourceError as error:
            sync()
            buffer.put(error)
        except Exception as exc:  # decoding must never kill the core; classify and report
            buffer.put(SourceError("corrupt_data", f"decoder failed: {exc}"))

    async def _analyse(
        self,
        frame: Frame,
        states: list[tuple[str, Analytic, Any, InferFn]],
        previous: asyncio.Task[None] | None,
    ) -> None:
        """Analyse one frame; its results wait for the previous frame's, so that order is kept.

        The frame's first inference of each analytic is sent at once, but its outputs reach the
        analytic only when the previous frame is done: an analytic's state therefore sees frames
        strictly in order, and only the code before its first ``infer`` call (which must not
        touch state that post-processing reads; see analytics/base.py) runs early. Events are
        published after the previous frame's.
        """
        record = self.record
        started = time.perf_counter()

        def after_previous(infer: InferFn) -> InferFn:
            first = True

            async def call(role: str, inputs: Any) -> dict[str, Any]:
                nonlocal first
                if not first or previous is None:
                    return await infer(role, inputs)
                first = False
                sent = asyncio.ensure_future(infer(role, inputs))
                try:
                    await _settled(previous)
                except BaseException:
                    sent.cancel()  # not sent yet, or its answer is not wanted any more
                    if sent.done() and not sent.cancelled():
                        sent.exception()  # retrieved: nobody will await it
                    raise
                return await sent

            return call

        async def run(name: str, analytic: Analytic, state: Any, infer: InferFn) -> list[dict[str, Any]]:
            try:
                return [
                    {name: event} for event in await analytic.process(frame, state, after_previous(infer))
                ]
            except LunaError as error:
                # Inference failures are reported, and the stream goes on with the next frame.
                record.statistics.last_error = f"{name}: {error.detail}"
                log.warning("analytic %s failed on frame %d: %s", name, frame.frame_number, error.detail)
                return []

        if len(states) == 1:
            results = await run(*states[0])
        else:
            results = [r for rs in await asyncio.gather(*(run(*entry) for entry in states)) for r in rs]
        if previous is not None:
            await _settled(previous)  # an analytic that did not infer may finish first
        for result in results:
            for event in result.values():
                await self._with_images(event)
            self.reporter.publish(record, result)
        record.statistics.frames_processed += 1
        record.statistics.frame_age = time.monotonic() - frame.decoded_at
        FRAME_ANALYSIS.observe(time.perf_counter() - started)


async def _settled(task: asyncio.Task[None]) -> None:
    """Wait for ``task`` to end; its failure is the session's to report (it awaits it), not ours."""
    if not task.done():
        await asyncio.wait([task])
