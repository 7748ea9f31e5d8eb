"""The core's metric instruments: histograms and counters the hot path updates.

A leaf module: it imports nothing of the core, so that the frame path, the batcher and the
interceptor can import it without pulling in the stream registry (the collectors read that,
in ``collectors.py``).
"""

from __future__ import annotations

import asyncio

from prometheus_client import Counter, Histogram

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
# The hot path's stages, for profiling (benchmarks read their sums and counts: mean per frame).
# Unlabelled or labelled by model only, so that their cardinality does not grow with streams.
_FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
FRAME_DECODE = Histogram(
    "lva_frame_decode_seconds",
    "Time the stream's decoding thread spends on one analysed frame: demux, decode, convert "
    "(with sampling, the skipped frames too).",
    buckets=_FAST,
)
FRAME_ANALYSIS = Histogram(
    "lva_frame_analysis_seconds",
    "Time from a frame leaving its stream's buffer to its events being published (all analytics).",
    buckets=_FAST,
)
BATCH_WAIT = Histogram(
    "lva_inference_queue_seconds",
    "Time an item waits in the core's batcher before its request leaves, by model.",
    ["model"],
    buckets=_FAST,
)
LOOP_LAG = Histogram(
    "lva_core_event_loop_lag_seconds",
    "How late the core's event loop runs a timer (sampled every 100 ms): a stall of the loop shows here.",
    buckets=_FAST,
)


async def watch_event_loop(interval: float = 0.1) -> None:
    """Sample the event loop's lag forever (cancel to stop): blocking work on the loop shows as lag."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        LOOP_LAG.observe(max(0.0, loop.time() - due))


RPC_REQUESTS = Counter("lva_grpc_requests_total", "gRPC requests served by the core.", ["method", "code"])
RPC_LATENCY = Histogram(
    "lva_grpc_request_duration_seconds",
    "Time to answer a unary gRPC request.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# The fleet (lva_core/fleet): this agent's lease in the shared store.
LEASE_RENEW = Histogram(
    "lva_fleet_lease_renew_seconds",
    "Time of one lease renewal, from sending it to its answer.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LEASE_LOST = Counter(
    "lva_fleet_lease_lost_total",
    "Times this agent fenced itself: its lease ran out unrenewed, or another start took its id.",
)
REGISTRATIONS = Counter(
    "lva_fleet_registrations_total", "Registrations of this agent (each one a new incarnation)."
)
FLEET_CLAIMS = Counter("lva_fleet_claims_total", "Streams this agent claimed from the shared store.")
FLEET_FAILOVERS = Counter(
    "lva_fleet_takeovers_total",
    "Streams this agent claimed from another agent: one whose lease had run out (a failover), or "
    "that drained and gave them back.",
)
FLEET_LOSSES = Counter(
    "lva_fleet_streams_lost_total",
    "Status writes of this agent's workers that changed nothing: the stream was taken over, "
    "changed by the user or deleted from another core; the worker stops.",
)

# Event images (lva_core/images): encoded off the event loop, kept until their ttl.
IMAGES_STORED = Counter(
    "lva_images_stored_total", "Event images encoded and stored, by media type.", ["mimetype"]
)
IMAGE_BYTES = Counter("lva_images_stored_bytes_total", "Bytes of the event images stored (encoded).")
IMAGE_ENCODE = Histogram(
    "lva_image_encode_seconds",
    "Time to downscale and encode one event image, on the image store's thread pool.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64),
)
IMAGES_DROPPED = Counter(
    "lva_images_dropped_total",
    "Event images not stored, by reason: busy (images.max_pending_encodes were pending), error "
    "(encoding or writing failed). The event is published with its image null.",
    ["reason"],
)

# Outbound delivery (lva_core/delivery/): per-callback counts are read at scrape time
# (collectors.py); these are what a scrape cannot reconstruct.
DELIVERY_ATTEMPTS = Counter(
    "lva_delivery_attempts_total",
    "Delivery attempts of outbound events, by sink type and outcome.",
    ["type", "outcome"],
)
DELIVERY_LATENCY = Histogram(
    "lva_delivery_latency_seconds",
    "From an event entering the outbox to its receiver accepting it, by sink type.",
    ["type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
