"""Where the core's time goes per frame: its hot-path histograms, read from its /metrics.

The core times each stage of the hot path in Prometheus histograms (``lva_core/metrics/instruments.py``):
decoding a frame in the stream's thread, the frame's whole analysis, the wait of an item in the
batcher, the inference request, and the lag of the event loop. A snapshot before and after a
run gives each stage's mean over the run (sum / count of the difference), which the results
record so that a later change to the hot path can be compared stage by stage.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

# metric -> (name in the results, what it is averaged over)
STAGES: dict[str, tuple[str, str]] = {
    "lva_frame_decode_seconds": ("decode_ms_per_frame", "frame"),
    "lva_frame_analysis_seconds": ("analysis_ms_per_frame", "frame"),
    "lva_inference_queue_seconds": ("batcher_wait_ms_per_item", "item"),
    "lva_inference_latency_seconds": ("inference_request_ms_per_batch", "batch"),
    "lva_core_event_loop_lag_seconds": ("event_loop_lag_ms_mean", "sample"),
}
LAG = "lva_core_event_loop_lag_seconds"

Snapshot = dict[str, Any]


async def snapshot(http: aiohttp.ClientSession, metrics_url: str) -> Snapshot:
    """Sums and counts of the stage histograms (all label sets added up), and the lag's buckets."""
    async with http.get(metrics_url) as response:
        response.raise_for_status()
        text = await response.text()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    lag_buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in STAGES:
            continue
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                sums[family.name] = sums.get(family.name, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                counts[family.name] = counts.get(family.name, 0.0) + sample.value
            elif sample.name.endswith("_bucket") and family.name == LAG:
                bound = float(sample.labels["le"])
                lag_buckets[bound] = lag_buckets.get(bound, 0.0) + sample.value
    return {"sums": sums, "counts": counts, "lag_buckets": lag_buckets}


def stages_between(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """Mean of each stage over the run, in milliseconds, with the number of observations."""
    result: dict[str, Any] = {}
    for metric, (name, unit) in STAGES.items():
        count = after["counts"].get(metric, 0.0) - before["counts"].get(metric, 0.0)
        total = after["sums"].get(metric, 0.0) - before["sums"].get(metric, 0.0)
        result[name] = round(1000 * total / count, 3) if count > 0 else None
        result[f"{unit}s_observed" if name != "event_loop_lag_ms_mean" else "lag_samples"] = int(count)
    result["event_loop_lag_ms_p99_bound"] = _lag_p99_bound(before["lag_buckets"], after["lag_buckets"])
    return result


def _lag_p99_bound(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The upper bound of the bucket that holds the 99th percentile of the run's loop lag, in ms."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]  # cumulative, like Prometheus' buckets
    if not counts or counts[-1] <= 0:
        return None
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= 0.99 * counts[-1]:
            return None if bound == float("inf") else round(bound * 1000, 3)
    return None
