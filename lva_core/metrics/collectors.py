"""The core's collectors and its ``/metrics`` server (``core.metrics_port``).

Stream counters are read from the live stream records at scrape time (a collector, not
counters incremented on the hot path), so ``/metrics`` always agrees with the statistics of
``GET /1/streams/{id}`` and costs nothing per frame.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from lva_core.events.bus import EventBus
    from lva_core.streams.manager import StreamManager


class StreamCollector(Collector):
    def __init__(self, manager: StreamManager, bus: EventBus) -> None:
        self.manager = manager
        self.bus = bus

    def collect(self) -> Iterator[Any]:
        counters = {
            "frames_decoded": CounterMetricFamily(
                "lva_stream_frames_decoded", "Frames decoded, per stream.", labels=["stream_id"]
            ),
            "frames_processed": CounterMetricFamily(
                "lva_stream_frames_processed",
                "Frames through the analytics, per stream.",
                labels=["stream_id"],
            ),
            "frames_dropped": CounterMetricFamily(
                "lva_stream_frames_dropped",
                "Frames dropped because analysis lagged, per stream.",
                labels=["stream_id"],
            ),
            "reconnects": CounterMetricFamily(
                "lva_stream_reconnects", "Source reconnections, per stream.", labels=["stream_id"]
            ),
        }
        frame_age = GaugeMetricFamily(
            "lva_stream_frame_age_seconds",
            "Decode-to-analysis age of the last processed frame.",
            labels=["stream_id"],
        )
        decode_fps = GaugeMetricFamily(
            "lva_stream_decode_fps", "Frames decoded per second.", labels=["stream_id"]
        )
        status = GaugeMetricFamily(
            "lva_stream_status", "1 for the stream's current status.", labels=["stream_id", "status"]
        )
        subscribers = GaugeMetricFamily(
            "lva_event_subscribers", "Event subscribers, per stream.", labels=["stream_id"]
        )
        for record in list(self.manager.records.values()):
            stats, labels = record.statistics, [record.stream_id]
            for name, family in counters.items():
                family.add_metric(labels, float(getattr(stats, name)))
            frame_age.add_metric(labels, stats.frame_age)
            decode_fps.add_metric(labels, stats.decode_fps)
            status.add_metric([record.stream_id, record.status.value], 1.0)
            subscribers.add_metric(labels, float(self.bus.subscriber_count(record.stream_id)))
        yield from counters.values()
        yield from (frame_age, decode_fps, status, subscribers)
        yield from self._delivery()
        published = CounterMetricFamily(
            "lva_event_messages_published", "Messages published on the event bus."
        )
        published.add_metric([], float(self.bus.published))
        yield published
        dropped = CounterMetricFamily(
            "lva_event_messages_dropped", "Messages dropped for slow subscribers (the oldest first)."
        )
        dropped.add_metric([], float(self.bus.dropped_total()))
        yield dropped

    def _delivery(self) -> Iterator[Any]:
        """Per callback of each stream, what its statistics show (GET /1/streams/{id})."""
        labels = ["stream_id", "callback", "type"]
        families = {
            "delivered": CounterMetricFamily(
                "lva_callback_events_delivered", "Events a callback's receiver accepted.", labels=labels
            ),
            "failed": CounterMetricFamily(
                "lva_callback_attempts_failed",
                "Delivery attempts that failed (each is retried).",
                labels=labels,
            ),
            "dropped": CounterMetricFamily(
                "lva_callback_events_dropped",
                "Events dropped undelivered by the outbox's bounds (delivery.max_pending, max_age).",
                labels=labels,
            ),
        }
        pending = GaugeMetricFamily(
            "lva_callback_events_pending", "Events waiting in the outbox, per callback.", labels=labels
        )
        delivery = self.manager.delivery
        for record in list(self.manager.records.values()):
            for path, stats in delivery.statistics(record):
                values = [record.stream_id, path, stats.kind]
                for name, family in families.items():
                    family.add_metric(values, float(getattr(stats, name)))
                pending.add_metric(values, float(stats.pending))
        yield from families.values()
        yield pending


# "decode:<stream id>" -> "decode", "ThreadPoolExecutor-0_3" -> "ThreadPoolExecutor": a bounded label.
_THREAD_KIND = re.compile(r"[A-Za-z_]+")


class RuntimeCollector(Collector):
    """Asyncio tasks and Python threads of the core, counted at scrape time.

    What the leak checks of the reliability suite (``reliability/``) count: a stream or a
    subscriber that leaves a task or a decoding thread behind shows here. The scrape runs in the
    metrics server's thread; ``asyncio.all_tasks`` copies the loop's weak set with retries,
    which is safe from another thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def collect(self) -> Iterator[Any]:
        tasks = GaugeMetricFamily("lva_core_asyncio_tasks", "Unfinished asyncio tasks of the core's loop.")
        tasks.add_metric([], float(len(asyncio.all_tasks(self.loop))))
        yield tasks
        threads = GaugeMetricFamily(
            "lva_core_threads",
            "Python threads of the core, by kind (the leading letters of the thread's name).",
            labels=["kind"],
        )
        kinds: dict[str, int] = {}
        for thread in threading.enumerate():
            match = _THREAD_KIND.match(thread.name)
            kind = match.group(0) if match else "other"
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, count in sorted(kinds.items()):
            threads.add_metric([kind], float(count))
        yield threads


def serve_metrics(host: str, port: int, manager: StreamManager, bus: EventBus) -> int:
    """Expose the default registry (process metrics included) plus the stream collector.

    Called from the core's event loop, whose tasks the runtime collector counts.
    """
    REGISTRY.register(StreamCollector(manager, bus))
    REGISTRY.register(RuntimeCollector(asyncio.get_running_loop()))
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
