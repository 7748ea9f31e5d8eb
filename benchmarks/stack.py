"""The stack the benchmarks measure, and what they read from its Triton.

The suite measures the services as they are deployed (separate processes talking gRPC and
WebSocket), not objects inside the benchmark's interpreter, so the test kit's launcher
(lva_testkit/stack.py) starts them exactly as the end-to-end tests do, with the default
configuration. The benchmark process is a client like any other: it creates streams over REST
and reads events from ``/1/ws``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tritonclient.grpc.aio as grpcclient

from lva_testkit import clips
from lva_testkit.paths import REPO
from lva_testkit.stack import Stack
from lva_testkit.stack import start_stack as start_services

CACHE = REPO / "benchmarks" / ".cache"


def cached_clip(seconds: float, fps: int = 25, size: tuple[int, int] = (1280, 720)) -> Path:
    """A sample clip of this length and size in the cache, built once and kept."""
    return clips.cached_clip(CACHE, seconds, fps, size)


def start_stack(log_dir: Path) -> Stack:
    # The benchmark's clips live in the cache: the one directory its streams read files from.
    # No rate limit on stream creation: the create/delete cycles make streams faster than
    # the default allows, and what they measure is the agent, not its limiter.
    env = {
        "LVA_STREAMS__ALLOWED_FILE_DIRS": json.dumps([str(CACHE.resolve())]),
        "LVA_STREAMS__CREATE_RATE__PER_SECOND": "0",
    }
    return start_services(log_dir, core_settings=env)


# ---- Triton's statistics ----------------------------------------------------------------------

_REQUEST_PHASES = ("success", "queue")
_EXECUTION_PHASES = ("compute_input", "compute_infer", "compute_output")


class TritonStats:
    """Cumulative inference statistics of one model, summed over its versions.

    Triton counts ``inference_count`` in items (a batch of 8 counts 8) and ``execution_count`` in
    model executions, so their ratio over an interval is the mean executed batch size. Durations
    are cumulative nanoseconds with a count. ``inference_stats`` counts per *request*, and a
    request's compute time there is its whole batch's (a batch of three requests adds its compute
    time three times), so the cost of an execution is taken from ``batch_stats``, which counts
    each execution once, per executed batch size.
    """

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.inferences = 0
        self.executions = 0
        self.request_ns: dict[str, int] = dict.fromkeys(_REQUEST_PHASES, 0)
        self.requests = 0
        self.execution_ns: dict[str, int] = dict.fromkeys(_EXECUTION_PHASES, 0)
        self.batches: dict[int, int] = {}  # executed batch size -> executions
        for model in raw.get("model_stats", []):
            self.inferences += int(model.get("inference_count", 0))
            self.executions += int(model.get("execution_count", 0))
            stats = model.get("inference_stats", {})
            self.requests += int(stats.get("success", {}).get("count", 0))
            for name in _REQUEST_PHASES:
                self.request_ns[name] += int(stats.get(name, {}).get("ns", 0))
            for batch in model.get("batch_stats", []):
                size = int(batch.get("batch_size", 0))
                self.batches[size] = self.batches.get(size, 0) + int(
                    batch.get("compute_infer", {}).get("count", 0)
                )
                for name in _EXECUTION_PHASES:
                    self.execution_ns[name] += int(batch.get(name, {}).get("ns", 0))

    def since(self, before: TritonStats) -> dict[str, Any]:
        """What happened between ``before`` and this snapshot."""
        inferences = self.inferences - before.inferences
        executions = self.executions - before.executions
        requests = self.requests - before.requests
        request_ns = {k: self.request_ns[k] - before.request_ns[k] for k in _REQUEST_PHASES}
        execution_ns = {k: self.execution_ns[k] - before.execution_ns[k] for k in _EXECUTION_PHASES}
        histogram = {
            size: n - before.batches.get(size, 0)
            for size, n in sorted(self.batches.items())
            if n - before.batches.get(size, 0) > 0
        }

        def per(ns: int, count: int) -> float | None:
            return ns / count / 1e6 if count else None

        return {
            "inferences": inferences,
            "executions": executions,
            "requests": requests,
            "mean_batch": inferences / executions if executions else None,
            "batch_histogram": {str(k): v for k, v in histogram.items()},
            # What one execution (one batch) costs inside the model, and the same per item.
            "compute_infer_ms_per_execution": per(execution_ns["compute_infer"], executions),
            "compute_infer_ms_per_item": per(execution_ns["compute_infer"], inferences),
            "compute_input_ms_per_execution": per(execution_ns["compute_input"], executions),
            "compute_output_ms_per_execution": per(execution_ns["compute_output"], executions),
            # Per request: time waiting in Triton's scheduler, and the whole request inside Triton.
            "queue_ms_per_request": per(request_ns["queue"], requests),
            "request_ms_in_triton": per(request_ns["success"], requests),
        }


class TritonProbe:
    """A gRPC client of the stack's Triton for statistics and model configuration."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)

    async def stats(self, model: str) -> TritonStats:
        raw = await self.client.get_inference_statistics(model, as_json=True)
        return TritonStats(json.loads(json.dumps(raw)))

    async def max_batch_size(self, model: str) -> int:
        config = await self.client.get_model_config(model, as_json=True)
        return int(config.get("config", {}).get("max_batch_size", 0))

    async def server_version(self) -> str:
        metadata = await self.client.get_server_metadata(as_json=True)
        return str(metadata.get("version", ""))

    async def close(self) -> None:
        await self.client.close()
