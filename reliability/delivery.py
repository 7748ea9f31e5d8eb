"""The delivery section: outbound events (issue 13) through receiver outages and a core kill.

One live RTSP stream with a people counter that reports every analysed frame (5 events/s) and
three callbacks: an HTTP receiver that is broken on purpose (down, 500s, hanging), an MQTT
broker that is restarted, and a *witness* HTTP receiver that is never down. Meanwhile the core
is SIGKILLed once (while the broken receiver has a backlog) and started again on the same
store. At the end the stream is paused, every lane is left to drain, and each callback's
distinct event ids are compared with what was produced.

What "produced" is, honestly: the union of every event id anyone saw, the WebSocket (which
shows an event before it is appended to the outbox, and misses events while the core is
down) and the three receivers (which see what the outbox held). An event that no callback
got and that was created in the second before a kill was shown but never durably queued: the
one loss the design allows (the outbox append is queued on the store's writer thread after
the event is published), reported as ``lost_at_kill``. Any other produced event a callback
never got is ``missing``, a violation; so are deliveries out of order, one id carrying two
bodies, one frame under two ids, a lane still pending after the drain, rows left in the
outbox, and a fault that no lane felt (the run would have measured nothing).

Also here: delivery latency with healthy receivers, from the events' ``event_create_time`` to
their arrival (``time.time()``; the receivers stamp arrivals with CLOCK_MONOTONIC, converted)
and from the core's histogram ``lva_delivery_latency_seconds`` (outbox append to accepted,
interpolated within its buckets); and the CPU an event image costs: ``encode()`` of 1280x720
frames of the sample clip at the default policy, in this process, and optionally the core's
CPU over the same file with and without the ``overview`` target.

``python -m reliability.delivery [--ci] [--json PATH]`` runs this section alone on a stack of
its own; ``python -m reliability.run`` runs it after the faults and the churn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import re
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.api import stream_body
from benchmarks.stats import summary
from lva_common.aio import wait_within
from lva_core.runtime import procfs
from lva_testkit import clips
from lva_testkit.mqtt_broker import MosquittoBroker, MqttCollector
from lva_testkit.rtsp_server import RtspServer
from lva_testkit.webhook_receiver import WebhookReceiver
from reliability import census
from reliability.bench import RESTART, Bench, wait_for

ANALYTIC = "people_counter"
EVERY = 5  # of the camera's 25 frames/s: 5 analysed, and each one reported ...
INTERVAL_S = 0.1  # ... by the period trigger (below the 0.2 s between two analysed frames)
CLIP_SIZE = (640, 360)
TOPIC = "lva/reliability/crowd"
HANG_TIMEOUT_S = 1.0  # the broken receiver's callback timeout: a hang is a failure after 1 s
# An event created this long before a kill (or after it, for clocks) that no callback got was
# never durably queued: published, its outbox append still on the writer thread's queue.
KILL_WINDOW_S = (1.0, 0.5)
LATENCY_BUCKETS = "lva_delivery_latency_seconds_bucket"


@dataclass(frozen=True)
class DeliverySizes:
    """The run's faults and windows: CI (under a minute) or the long form."""

    latency_window_s: float = 20.0  # healthy receivers: the latency samples
    http_downs: int = 3  # the broken receiver down (connections refused) ...
    http_down_s: float = 5.0  # ... for this long each time
    http_error_s: float = 5.0  # answering 500
    http_hang_s: float = 5.0  # reading requests and never answering
    broker_restarts: int = 2  # mosquitto stopped and started on its port ...
    broker_down_s: float = 3.0  # ... after this long
    core_kills: int = 1  # SIGKILL of the core, with a backlog on the broken receiver's lane
    backlog_s: float = 2.0  # the broken receiver is down this long before a kill
    gap_s: float = 3.0  # healthy time between two faults
    drain_timeout_s: float = 90.0
    encode_calls: int = 300  # encode() calls of the in-process CPU figure
    stack_cpu_runs: int = 3  # pairs of file runs with and without the overview target (0: none)
    stack_cpu_clip_s: float = 4.0

    @classmethod
    def ci(cls) -> DeliverySizes:
        return cls(
            latency_window_s=4.0,
            http_downs=1,
            http_down_s=2.0,
            http_error_s=2.0,
            http_hang_s=2.5,
            broker_restarts=1,
            broker_down_s=2.0,
            backlog_s=1.5,
            gap_s=1.0,
            drain_timeout_s=30.0,
            encode_calls=40,
            stack_cpu_runs=0,
        )


# ---- what each side saw ------------------------------------------------------------------------


def _wall(value: Any) -> float | None:
    """An event's RFC 3339 time (``+00:00`` or ``Z``, up to nanoseconds) as epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    match = re.fullmatch(r"([^.]*)(?:\.(\d+))?(.*)", text)
    if match is None:
        return None
    head, fraction, zone = match.groups()
    try:
        seconds = datetime.fromisoformat(head + (zone or "+00:00")).timestamp()
    except ValueError:
        return None
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


@dataclass
class EventInfo:
    """What one event says about itself (the first copy seen of it)."""

    created: float | None  # event_create_time, epoch seconds
    frame_number: int | None
    image: bool  # overview.image is a URL (not null: the encode was not dropped)


def _info(event: Mapping[str, Any], created: Any) -> EventInfo:
    overview = event.get("overview") or {}
    frame = overview.get("frame_number")
    return EventInfo(_wall(created), int(frame) if frame is not None else None, bool(overview.get("image")))


def _created(infos: Mapping[str, EventInfo], event_id: str) -> float | None:
    info = infos.get(event_id)
    return info.created if info is not None else None


@dataclass
class Seen:
    """What one receiver accepted: the first arrival (wall clock) of each id, in arrival order."""

    first: dict[str, float] = field(default_factory=dict)
    accepted: int = 0  # acceptances, repeats included
    digests: dict[str, set[str]] = field(default_factory=dict)  # id -> sha256 of each body

    def take(self, event_id: str, arrived: float, body: bytes) -> None:
        self.accepted += 1
        self.first.setdefault(event_id, arrived)
        self.digests.setdefault(event_id, set()).add(hashlib.sha256(body).hexdigest())


class EventWatcher:
    """The stream's WebSocket: every people_counter event it shows, reconnecting whenever it closes."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.events: dict[str, float] = {}  # id -> arrival (wall clock)
        self.infos: dict[str, EventInfo] = {}
        self.connections = 0
        self.subscribed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> EventWatcher:
        self.task = asyncio.create_task(self._run(), name="delivery-ws")
        return self

    async def _run(self) -> None:
        while True:
            try:
                async with self.http.ws_connect(self.url, heartbeat=None, max_msg_size=0) as ws:
                    self.connections += 1
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        arrived = time.time()
                        data = json.loads(message.data)
                        self.subscribed.set()
                        event = (data.get("analytics_results") or {}).get(ANALYTIC)
                        if isinstance(event, dict) and event.get("event_id"):
                            event_id = str(event["event_id"])
                            self.events.setdefault(event_id, arrived)
                            self.infos.setdefault(event_id, _info(event, event.get("event_create_time")))
            except (aiohttp.ClientError, TimeoutError, ConnectionError, ValueError):
                pass  # the facade said no (the core is down) or closed: try again
            await asyncio.sleep(0.3)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def _clock_offset() -> float:
    """time.time() - time.monotonic(): the receivers' monotonic arrivals as wall-clock times."""
    return time.time() - time.monotonic()


def _http_seen(receiver: WebhookReceiver, offset: float, infos: dict[str, EventInfo]) -> Seen:
    """The POSTs the receiver accepted (answered 2xx at once): refused or hung ones are attempts."""
    seen = Seen()
    for request in receiver.received():
        if request.mode != "ok" or not isinstance(request.json, dict):
            continue
        event = request.json.get("event") or {}
        event_id = str(event.get("event_id") or "")
        if not event_id:
            continue
        seen.take(event_id, request.arrived + offset, request.body)
        infos.setdefault(event_id, _info(event, request.json.get("event_create_time")))
    return seen


def _mqtt_seen(collector: MqttCollector, offset: float, infos: dict[str, EventInfo]) -> Seen:
    seen = Seen()
    for message in collector.messages():
        try:
            body = message.json()
        except ValueError:
            continue
        event = body.get("event") or {} if isinstance(body, dict) else {}
        event_id = str(event.get("event_id") or "")
        if not event_id:
            continue
        seen.take(event_id, message.arrived + offset, message.payload)
        infos.setdefault(event_id, _info(event, body.get("event_create_time")))
    return seen


# ---- the lanes' statistics, across the core's lives ----------------------------------------------


@dataclass
class StatsLog:
    """The last statistics.callbacks seen in each life of the core (a kill resets its counters)."""

    lives: list[dict[str, dict[str, Any]]] = field(default_factory=lambda: [{}])
    errors: dict[str, list[str]] = field(default_factory=dict)  # callback -> distinct last_error

    def take(self, callbacks: Iterable[Mapping[str, Any]]) -> None:
        for stats in callbacks:
            name = str(stats["callback"])
            self.lives[-1][name] = dict(stats)
            error = stats.get("last_error")
            seen = self.errors.setdefault(name, [])
            if error and str(error) not in seen and len(seen) < 8:
                seen.append(str(error))

    def new_life(self) -> None:
        self.lives.append({})

    def total(self, callback: str, key: str) -> int:
        """The sum over lives (a lower bound for a killed life: its last reading)."""
        return sum(int(life.get(callback, {}).get(key) or 0) for life in self.lives)

    def last(self, callback: str) -> dict[str, Any]:
        return self.lives[-1].get(callback, {})


# ---- latency --------------------------------------------------------------------------------------


def _buckets(metrics: census.Metrics, kind: str) -> dict[float, float]:
    return {
        float(s.labels["le"]): s.value
        for s in metrics.samples
        if s.name == LATENCY_BUCKETS and s.labels.get("type") == kind
    }


def histogram_quantiles(
    before: Mapping[float, float], after: Mapping[float, float], quantiles: Sequence[float]
) -> dict[str, Any]:
    """Quantiles of the observations between two scrapes of a cumulative histogram, interpolated
    linearly within the bucket they fall in (as PromQL's histogram_quantile); milliseconds."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    figures: dict[str, Any] = {"n": int(total)}
    for q in quantiles:
        key = f"p{q * 100:g}"
        if total <= 0:
            figures[key] = None
            continue
        rank = q * total
        index = next(i for i, c in enumerate(counts) if c >= rank)
        upper = bounds[index]
        lower = bounds[index - 1] if index else 0.0
        below = counts[index - 1] if index else 0.0
        if upper == float("inf"):
            value = lower  # beyond the last finite bucket: its bound is all one knows
        else:
            inside = counts[index] - below
            value = lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        figures[key] = round(value * 1000, 1)
    return figures


def _latencies(seen: Iterable[Seen], infos: Mapping[str, EventInfo], start: float, end: float) -> list[float]:
    """event_create_time -> first arrival, for events created within [start, end)."""
    samples = []
    for lane in seen:
        for event_id, arrived in lane.first.items():
            created = _created(infos, event_id)
            if created is not None and start <= created < end:
                samples.append(arrived - created)
    return samples


# ---- the CPU an event image costs ------------------------------------------------------------------


def encode_cpu(clip: Path, calls: int) -> dict[str, Any]:
    """encode() of 1280x720 frames of the sample clip at the default policy, in this process.

    Ten frames spread over the clip (one to three people on a gradient), cycled; CPU time per
    call from time.process_time() over all calls (the figure) and time.thread_time() per call
    (its spread: only this thread's work).
    """
    import av

    from lva_core.images.encode import encode
    from lva_core.images.policy import ImagePolicy

    frames = []
    with av.open(str(clip)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % 5 == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == 10:
                break
    policy = ImagePolicy()
    encode(frames[0], policy)  # Pillow's first call loads its JPEG plugin
    per_call: list[float] = []
    sizes: list[int] = []
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(calls):
        before = time.thread_time()
        image = encode(frames[index % len(frames)], policy)
        per_call.append(time.thread_time() - before)
        sizes.append(len(image.data))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    height, width = frames[0].shape[:2]
    return {
        "frame": [int(width), int(height)],
        "policy": asdict(policy),
        "calls": calls,
        "cpu_ms_per_call": round(cpu / calls * 1000, 2),
        "wall_ms_per_call": round(wall / calls * 1000, 2),
        "thread_cpu_ms": summary(per_call, scale=1000, digits=2),
        "jpeg_bytes": summary(sizes, digits=0),
    }


def _counter(
    targets: list[str], callbacks: list[dict[str, Any]], interval: float = INTERVAL_S
) -> dict[str, Any]:
    """A people counter that reports the count every ``interval`` seconds (the period trigger)."""
    return {
        "analytic_name": ANALYTIC,
        "parameters": {
            "probe_count": 1,
            # 0: every frame counts as crowded, so the count is reported every interval.
            "people_count_threshold": 0,
            "rate": {"period": 1, "unit": "frame"},
            "event_policy": {"trigger": "period", "interval": interval},
            "targets": targets,
            "callbacks": callbacks,
        },
    }


async def _file_run(bench: Bench, path: Path, targets: list[str]) -> dict[str, Any]:
    """The clip through the core once; the core's CPU seconds over it and the events it made."""
    # Every frame analysed and reported: 25 events a second of the clip.
    body = stream_body(path, [_counter(targets, [], 0.01)], every=1, status="pause", name="image-cpu")
    stream_id = await bench.api.create(body)
    watcher = EventWatcher(bench.http, f"{bench.api.ws_url}?stream_id={stream_id}").start()
    try:
        await wait_within(watcher.subscribed.wait(), 10)
        pid = bench.stack.core.proc.pid
        cpu = procfs.tree_cpu_seconds(pid)
        started = time.monotonic()
        await bench.api.patch(stream_id, "pending")
        [record] = await bench.api.wait_final([stream_id], timeout=300)
        seconds = time.monotonic() - started
        cpu = procfs.tree_cpu_seconds(pid) - cpu
        await asyncio.sleep(0.5)  # the last events reach the WebSocket
    finally:
        await watcher.close()
        await bench.api.delete(stream_id)
    return {
        "status": record["status"],
        "frames": int(record["statistics"]["frames_processed"]),
        "events": len(watcher.events),
        "images": sum(1 for i in watcher.infos.values() if i.image),
        "core_cpu_s": round(cpu, 3),
        "seconds": round(seconds, 2),
    }


async def stack_cpu(bench: Bench, sizes: DeliverySizes) -> dict[str, Any] | None:
    """The core's CPU over one 1280x720 file, every frame an event, with and without overview.

    Runs alternate (without, with, without, with, ...) so that drift in the machine's load falls
    on both; the figure is the difference of the medians per event. Triton's CPU is not the
    core's and is not counted.
    """
    if sizes.stack_cpu_runs <= 0:
        return None
    path = await asyncio.to_thread(clips.cached_clip, bench.clips, sizes.stack_cpu_clip_s)
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    for _ in range(sizes.stack_cpu_runs):
        runs["without"].append(await _file_run(bench, path, ["coordinates"]))
        runs["with"].append(await _file_run(bench, path, ["coordinates", "overview"]))

    def per_event(kind: str) -> float:
        return float(statistics.median([r["core_cpu_s"] / max(1, r["events"]) for r in runs[kind]]))

    added = per_event("with") - per_event("without")
    return {
        "clip": path.name,
        "runs": runs,
        "core_cpu_ms_per_event": {
            "without_overview": round(per_event("without") * 1000, 2),
            "with_overview": round(per_event("with") * 1000, 2),
            "added": round(added * 1000, 2),
        },
    }


# ---- the run -------------------------------------------------------------------------------------

TARGETS = ["coordinates", "overview"]
ROLES = ("broken", "restarted", "witness")  # what happens to each callback's receiver
_UNDELIVERED = re.compile(r"stream (\S+): (\d+) undelivered events for (\S+)")


@dataclass
class Kill:
    at: float  # wall clock, just before the SIGKILL
    restarted: float = 0.0  # wall clock, once the new core listened
    resumed_s: float | None = None  # kill -> the witness got an event created after the restart
    outbox_at_kill: dict[str, int] | str = field(default_factory=dict)  # rows on disk, per callback
    outbox_at_restart: dict[str, int] = field(default_factory=dict)  # what the new core's log says


class Rig:
    """The camera, the receivers, the broker and the stream of one run, and what each side saw."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.camera: RtspServer | None = None
        self.broken = WebhookReceiver()
        self.witness = WebhookReceiver()
        self.broker = MosquittoBroker(keep_sessions=True)  # subscribers' sessions survive restarts
        self.collector: MqttCollector | None = None
        self.watcher: EventWatcher | None = None
        self.stream_id = ""
        self.stats = StatsLog()
        self.infos: dict[str, EventInfo] = {}
        self.offset = _clock_offset()
        self._poller: asyncio.Task[None] | None = None

    def callbacks(self) -> list[dict[str, Any]]:
        """In the order of ROLES."""
        return [
            {"type": "http", "url": self.broken.url("/broken"), "timeout": HANG_TIMEOUT_S},
            {"type": "mqtt", "url": self.broker.url, "topic": TOPIC, "qos": 1},
            {"type": "http", "url": self.witness.url("/witness")},
        ]

    async def start(self) -> None:
        """Everything up, the stream created, watched and started; returns once events flow."""
        live = await asyncio.to_thread(clips.clip, self.bench.clips, "delivery-live.mp4", 4.0, CLIP_SIZE)
        self.camera = RtspServer(live, self.bench.log_dir / "rtsp-delivery.log", shared=False)
        await asyncio.to_thread(self.camera.start)
        self.broken.start()
        self.witness.start()
        await asyncio.to_thread(self.broker.start)
        self.collector = MqttCollector(self.broker.url, "lva/reliability/#")
        await asyncio.to_thread(self.collector.start)
        body = stream_body(
            self.camera.url,
            [_counter(TARGETS, self.callbacks())],
            live=True,
            every=EVERY,
            status="pause",
            name="delivery",
        )
        body["autorestart"] = RESTART
        self.stream_id = await self.bench.api.create(body)
        # Subscribed before the stream starts: the WebSocket sees its first event.
        self.watcher = EventWatcher(self.bench.http, f"{self.bench.api.ws_url}?stream_id={self.stream_id}")
        self.watcher.start()
        await wait_within(self.watcher.subscribed.wait(), 10)
        await self.bench.api.patch(self.stream_id, "pending")
        self._poller = asyncio.create_task(self._poll(), name="delivery-stats")

        async def flowing() -> bool:
            return all(len(lane.first) >= 3 for lane in self.lanes())

        await wait_for(flowing, 60, "events at every receiver")

    def lanes(self) -> list[Seen]:
        """What each callback's receiver accepted so far, in the order of ROLES."""
        assert self.collector is not None
        return [
            _http_seen(self.broken, self.offset, self.infos),
            _mqtt_seen(self.collector, self.offset, self.infos),
            _http_seen(self.witness, self.offset, self.infos),
        ]

    async def stats_now(self) -> list[dict[str, Any]] | None:
        """statistics.callbacks now (None: the core is down), also kept in :attr:`stats`."""
        try:
            record = await self.bench.api.get(self.stream_id)
        except (RuntimeError, aiohttp.ClientError, TimeoutError):
            return None  # the facade answers 503 while the core is down
        callbacks = list(record["statistics"].get("callbacks") or [])
        self.stats.take(callbacks)
        return callbacks

    async def _poll(self) -> None:
        while True:
            await self.stats_now()
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        """Everything down and the stream deleted; what the receivers recorded stays readable."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self.watcher is not None:
            await self.watcher.close()
        if self.stream_id:
            with contextlib.suppress(RuntimeError, aiohttp.ClientError):
                await self.bench.api.delete(self.stream_id)
        if self.collector is not None:
            await asyncio.to_thread(self.collector.stop)
        await asyncio.to_thread(self.broker.close)
        await asyncio.to_thread(self.broken.stop)
        await asyncio.to_thread(self.witness.stop)
        if self.camera is not None:
            await asyncio.to_thread(self.camera.stop)


async def _latency(rig: Rig, window_s: float) -> dict[str, Any]:
    """Every receiver healthy for ``window_s``: event created -> arrived, and the core's histogram."""
    await asyncio.sleep(1.0)  # past the first connections
    port = rig.bench.stack.core.metrics_port
    before = await asyncio.to_thread(census.scrape, port)
    start = time.time()
    await asyncio.sleep(window_s)
    end = time.time()
    await asyncio.sleep(1.0)  # the window's last events arrive
    after = await asyncio.to_thread(census.scrape, port)
    broken, mqtt, witness = rig.lanes()
    figures: dict[str, Any] = {"window_s": round(end - start, 1)}
    for kind, lanes in (("http", [broken, witness]), ("mqtt", [mqtt])):
        figures[kind] = {
            "created_to_received_ms": summary(_latencies(lanes, rig.infos, start, end), scale=1000, digits=1),
            "outbox_to_accepted_ms": histogram_quantiles(
                _buckets(before, kind), _buckets(after, kind), (0.5, 0.99)
            ),
        }
    return figures


async def _receiver_faults(rig: Rig, sizes: DeliverySizes) -> None:
    """The broken receiver down, answering 500, hanging; the broker restarted meanwhile."""

    async def http() -> None:
        for _ in range(sizes.http_downs):
            await asyncio.to_thread(rig.broken.down)
            await asyncio.sleep(sizes.http_down_s)
            await asyncio.to_thread(rig.broken.up)
            await asyncio.sleep(sizes.gap_s)
        rig.broken.error(500)
        await asyncio.sleep(sizes.http_error_s)
        rig.broken.ok()
        await asyncio.sleep(sizes.gap_s)
        rig.broken.hang()
        await asyncio.sleep(sizes.http_hang_s)
        rig.broken.ok()
        await asyncio.sleep(sizes.gap_s)

    async def broker() -> None:
        for _ in range(sizes.broker_restarts):
            await asyncio.sleep(sizes.gap_s)
            await asyncio.to_thread(rig.broker.restart, sizes.broker_down_s)

    await asyncio.gather(http(), broker())


async def _kill_core(rig: Rig, sizes: DeliverySizes) -> Kill:
    """SIGKILL the core while the broken receiver is down (its lane holds a backlog), start a
    new one on the same store, and wait for the stream's events to come again."""
    bench = rig.bench
    await asyncio.to_thread(rig.broken.down)
    await asyncio.sleep(sizes.backlog_s)
    await rig.stats_now()  # the last statistics of this life
    kill = Kill(time.time())
    await asyncio.to_thread(bench.kill_core)
    rig.stats.new_life()
    kill.outbox_at_kill = await asyncio.to_thread(_outbox_rows, bench.stack.core.store_path, rig.stream_id)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(bench.restart_core)
    kill.restarted = time.time()

    async def resumed() -> bool:
        infos: dict[str, EventInfo] = {}
        seen = _http_seen(rig.witness, rig.offset, infos)
        return any((infos[i].created or 0.0) > kill.restarted for i in seen.first)

    with contextlib.suppress(TimeoutError):
        await wait_for(resumed, 60, "events after the core's restart")
        kill.resumed_s = round(time.time() - kill.at, 2)
    for match in _UNDELIVERED.finditer(bench.stack.core.log_text()):
        if match[1] == rig.stream_id:
            kill.outbox_at_restart[match[3]] = int(match[2])
    await asyncio.to_thread(rig.broken.up)
    await asyncio.sleep(sizes.gap_s)
    return kill


async def _drain(rig: Rig, timeout: float) -> float | None:
    """Seconds until no lane holds anything and the receivers stopped growing; None: timed out."""
    started = time.monotonic()

    async def empty() -> bool:
        current = await rig.stats_now()
        return current is not None and all(int(s.get("pending") or 0) == 0 for s in current)

    try:
        await wait_for(empty, timeout, "every lane drained", poll=0.25)
    except TimeoutError:
        return None
    # Delivered means accepted by the broker: its subscriber may be a moment behind.
    counts: list[int] = []
    while (len(counts) < 8 or len(set(counts[-8:])) > 1) and time.monotonic() - started < timeout:
        counts.append(sum(len(lane.first) for lane in rig.lanes()))
        await asyncio.sleep(0.25)
    return round(time.monotonic() - started, 2)


def _outbox_rows(store: Path | None, stream_id: str) -> dict[str, int] | str:
    """The stream's rows in the outbox table per callback, read from a dead core's store (a
    running core locks its file: locking_mode=EXCLUSIVE); the error in words when unreadable."""
    if store is None:
        return "the core has no stream store file"
    try:
        with contextlib.closing(sqlite3.connect(store, timeout=5)) as db:
            rows = db.execute(
                "SELECT callback, count(*) FROM outbox WHERE stream_id = ? GROUP BY callback", (stream_id,)
            ).fetchall()
    except sqlite3.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return {str(callback): int(count) for callback, count in rows}


# ---- the figures ---------------------------------------------------------------------------------


def _out_of_order(lane: Seen, infos: Mapping[str, EventInfo]) -> int:
    """First arrivals older than one already delivered: a lane's order is creation order."""
    late, newest = 0, float("-inf")
    for event_id in lane.first:
        created = _created(infos, event_id)
        if created is None:
            continue
        if created < newest:
            late += 1
        newest = max(newest, created)
    return late


def _frames_with_two_ids(infos: Mapping[str, EventInfo], kills: Sequence[Kill]) -> int:
    """One frame that came as two events: two ids in a row on the same frame number, within one
    life of the core (a restarted source numbers its frames from 0 again)."""
    dated = sorted((i for i in infos.values() if i.created is not None), key=lambda i: i.created or 0.0)

    def life(info: EventInfo) -> int:
        return sum(1 for kill in kills if (info.created or 0.0) > kill.at)

    doubled = 0
    for _, group in itertools.groupby(dated, key=life):
        numbers = [i.frame_number for i in group if i.frame_number is not None]
        doubled += sum(1 for a, b in itertools.pairwise(numbers) if a == b)
    return doubled


def _near_a_kill(created: float | None, kills: Sequence[Kill]) -> bool:
    before, after = KILL_WINDOW_S
    return created is not None and any(k.at - before <= created <= k.at + after for k in kills)


def _lane(
    rig: Rig, index: int, lane: Seen, produced: set[str], kills: Sequence[Kill]
) -> tuple[dict[str, Any], list[str]]:
    """One callback's figures and violations."""
    name = f"analytics[0].parameters.callbacks[{index}]"
    role, kind = ROLES[index], rig.callbacks()[index]["type"]
    last = rig.stats.last(name)
    absent = produced - set(lane.first)
    at_kill = {i for i in absent if _near_a_kill(_created(rig.infos, i), kills)}
    missing = sorted(absent - at_kill, key=lambda i: _created(rig.infos, i) or 0.0)
    figures = {
        "callback": name,
        "role": role,
        "type": kind,
        "target": last.get("target"),
        "produced": len(produced),
        "delivered": len(lane.first),
        "duplicates": lane.accepted - len(lane.first),
        "dropped": rig.stats.total(name, "dropped"),
        "lost_at_kill": len(at_kill),
        "missing": len(missing),
        "out_of_order": _out_of_order(lane, rig.infos),
        "attempts_failed": rig.stats.total(name, "failed"),
        "pending_at_end": int(last.get("pending") or 0),
        "errors_seen": rig.stats.errors.get(name, []),
    }
    what = f"{name} ({role} {kind})"
    violations = []
    if missing:
        violations.append(f"{what}: {len(missing)} produced events never delivered, first {missing[:3]}")
    if figures["out_of_order"]:
        violations.append(f"{what}: {figures['out_of_order']} events delivered out of order")
    if figures["pending_at_end"]:
        violations.append(f"{what}: {figures['pending_at_end']} events still pending after the drain")
    if role == "witness" and figures["attempts_failed"]:
        violations.append(f"{what}: never down, yet {figures['attempts_failed']} failed attempts")
    if role != "witness" and not figures["attempts_failed"]:
        violations.append(f"{what}: no failed attempt, the faults never reached the lane")
    return figures, violations


def _kill_violations(number: int, kill: Kill) -> list[str]:
    """The backlog on disk at the kill is what the new core takes up: the same rows, per lane."""
    what = f"kill #{number}"
    if kill.resumed_s is None:
        return [f"{what}: no event after the core's restart within 60 s"]
    if isinstance(kill.outbox_at_kill, str):
        return [f"{what}: the dead core's outbox could not be read ({kill.outbox_at_kill})"]
    violations = []
    if not kill.outbox_at_kill.get(f"analytics[0].parameters.callbacks[{ROLES.index('broken')}]"):
        violations.append(f"{what}: the broken receiver's lane held no backlog: the kill tested nothing")
    if kill.outbox_at_kill != kill.outbox_at_restart:
        violations.append(
            f"{what}: the outbox held {kill.outbox_at_kill}, the new core took up {kill.outbox_at_restart}"
        )
    return violations


def _figures(
    rig: Rig, lanes: Sequence[Seen], kills: Sequence[Kill], drained_s: float | None
) -> dict[str, Any]:
    assert rig.watcher is not None
    shown = rig.watcher.events
    for event_id, info in rig.watcher.infos.items():
        rig.infos.setdefault(event_id, info)
    delivered: set[str] = set().union(*(lane.first for lane in lanes))
    produced = delivered | set(shown)
    never_queued = produced - delivered  # shown on the WebSocket, at no receiver
    digests: dict[str, set[str]] = {}
    for lane in lanes:
        for event_id, values in lane.digests.items():
            digests.setdefault(event_id, set()).update(values)
    two_bodies = sorted(i for i, values in digests.items() if len(values) > 1)
    doubled = _frames_with_two_ids(rig.infos, kills)
    last_kill = kills[-1].at if kills else float("inf")

    callbacks, violations = [], []
    for index, lane in enumerate(lanes):
        figures, broken = _lane(rig, index, lane, produced, kills)
        callbacks.append(figures)
        violations += broken
    if drained_s is None:
        violations.append("the lanes did not drain in time")
    if two_bodies:
        violations.append(f"{len(two_bodies)} event ids came with two different bodies: {two_bodies[:3]}")
    if doubled:
        violations.append(f"{doubled} frames came as two events (two ids)")
    for number, kill in enumerate(kills, 1):
        violations += _kill_violations(number, kill)
    return {
        "produced": len(produced),
        "produced_after_last_kill": sum(1 for i in produced if (_created(rig.infos, i) or 0.0) > last_kill),
        "websocket_saw": len(shown),
        "websocket_missed": len(delivered - set(shown)),
        "websocket_connections": rig.watcher.connections,
        "never_queued": len(never_queued),
        "lost_at_kill": sum(1 for i in never_queued if _near_a_kill(_created(rig.infos, i), kills)),
        "callbacks": callbacks,
        "ids_with_two_bodies": len(two_bodies),
        "frames_with_two_ids": doubled,
        "events_without_image": sum(1 for i in produced if i in rig.infos and not rig.infos[i].image),
        "drained_s": drained_s,
        "core_kills": [
            {
                "restart_s": round(k.restarted - k.at, 2),
                "resumed_s": k.resumed_s,
                "outbox_at_kill": k.outbox_at_kill,
                "outbox_at_restart": k.outbox_at_restart,
            }
            for k in kills
        ],
        "violations": violations,
    }


async def run_delivery(bench: Bench, sizes: DeliverySizes) -> dict[str, Any]:
    """The section: its figures and ``violations``."""
    started = time.monotonic()
    await bench.stop_witnesses()  # a kill would bring them back from the store
    sample = await asyncio.to_thread(clips.cached_clip, bench.clips, 2.0)
    encoding = await asyncio.to_thread(encode_cpu, sample, sizes.encode_calls)
    rig = Rig(bench)
    kills: list[Kill] = []
    try:
        await rig.start()
        latency = await _latency(rig, sizes.latency_window_s)
        await _receiver_faults(rig, sizes)
        for _ in range(sizes.core_kills):
            kills.append(await _kill_core(rig, sizes))
        await bench.api.patch(rig.stream_id, "pause")
        await asyncio.sleep(1.0)  # the worker's last events
        drained_s = await _drain(rig, sizes.drain_timeout_s)
        lanes = rig.lanes()
    finally:
        await rig.stop()
    return {
        "stream": {
            "source": f"RTSP {CLIP_SIZE[0]}x{CLIP_SIZE[1]}, 25 frames/s, every {EVERY}th analysed",
            "analytic": ANALYTIC,
            "targets": TARGETS,
            "callbacks": [f"{c['type']} ({role})" for c, role in zip(rig.callbacks(), ROLES, strict=True)],
        },
        **_figures(rig, lanes, kills, drained_s),
        "latency": latency,
        "image_encode": encoding,
        "image_stack_cpu": await stack_cpu(bench, sizes),
        "seconds": round(time.monotonic() - started, 1),
    }


def brief(result: Mapping[str, Any]) -> str:
    """One line of figures for a CI log."""
    lanes = " ".join(
        f"{c['role']}/{c['type']} delivered={c['delivered']}/{c['produced']} dup={c['duplicates']} "
        f"dropped={c['dropped']} missing={c['missing']} failed={c['attempts_failed']};"
        for c in result["callbacks"]
    )
    http, mqtt = (result["latency"][kind]["created_to_received_ms"] for kind in ("http", "mqtt"))
    encode = result["image_encode"]
    parts = [
        f"produced={result['produced']} (websocket {result['websocket_saw']}, "
        f"lost_at_kill {result['lost_at_kill']})",
        lanes,
        f"latency p50/p99 http {http['p50']}/{http['p99']} ms, mqtt {mqtt['p50']}/{mqtt['p99']} ms;",
        f"jpeg {encode['frame'][0]}x{encode['frame'][1]} {encode['cpu_ms_per_call']} ms CPU;",
        f"drained in {result['drained_s']} s",
    ]
    stack = result.get("image_stack_cpu")
    if stack:
        parts.append(f"core +{stack['core_cpu_ms_per_event']['added']} ms CPU/event with overview")
    return "delivery: " + " ".join(parts)


async def _main(sizes: DeliverySizes, log_dir: Path) -> dict[str, Any]:
    from reliability.bench import start_bench

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        bench = await start_bench(log_dir, http)
        try:
            return await run_delivery(bench, sizes)
        finally:
            await bench.stop()


def main() -> int:
    from lva_testkit.paths import REPO

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ci", action="store_true", help="the bounded sizes of the CI test")
    parser.add_argument("--json", type=Path, help="write the figures here as well")
    args = parser.parse_args()
    sizes = DeliverySizes.ci() if args.ci else DeliverySizes()
    stamp = datetime.now().strftime("%Y-%m-%dT%H%M%S")
    result = asyncio.run(_main(sizes, REPO / "reliability" / ".cache" / "logs" / f"delivery-{stamp}"))
    text = json.dumps({"sizes": asdict(sizes), **result}, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    print(brief(result))
    for violation in result["violations"]:
        print(f"  VIOLATION {violation}")
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
