"""Prometheus metrics of the core, served on ``core.metrics_port``.

Stream counters are read from the live stream records at scrape time (a collector, not
counters incremented on the hot path), so ``/metrics`` always agrees with the statistics of
``GET /1/streams/{id}`` and costs nothing per frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from lva_core.events.bus import EventBus
    from lva_core.streams.manager import StreamManager

INFERENCE_LATENCY = Histogram(
    "lva_inference_latency_seconds",
    "Time of one inference request to Triton (one batch), by model.",
    ["model"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12),
)
BATCH_SIZE = Histogram(
    "lva_inference_batch_size",
    "Items per inference request sent by the core's batcher, by model.",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
)
INFERENCE_ERRORS = Counter(
    "lva_inference_errors_total",
    "Failed inference requests, by model and LUNA error code.",
    ["model", "code"],
)
RPC_REQUESTS = Counter("lva_grpc_requests_total", "gRPC requests served by the core.", ["method", "code"])
RPC_LATENCY = Histogram(
    "lva_grpc_request_duration_seconds",
    "Time to answer a unary gRPC request.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


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


def serve_metrics(host: str, port: int, manager: StreamManager, bus: EventBus) -> int:
    """Expose the default registry (process metrics included) plus the stream collector."""
    REGISTRY.register(StreamCollector(manager, bus))
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
