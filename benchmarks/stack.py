"""The real stack under test: Triton, core and facade as processes on free ports, as the tests start them.

The suite measures the services as they are deployed (separate processes talking gRPC and
WebSocket), not objects inside the benchmark's interpreter, so ``tests/helpers.py`` starts them
exactly as the end-to-end tests do, with the default configuration. The benchmark process is a
client like any other: it creates streams over REST and reads events from ``/1/ws``.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import tritonclient.grpc.aio as grpcclient

from benchmarks import procs
from tests.helpers import REPO, Service, start_core, start_facade, start_triton
from tools.make_sample_clip import make_clip

CACHE = REPO / "benchmarks" / ".cache"
PROBE_ENTRY_POINT = "pipeline_probe = lva_core.analytics.pipeline_probe:PipelineProbe"


def cached_clip(seconds: float, fps: int = 25, size: tuple[int, int] = (1280, 720)) -> Path:
    """A sample clip (tools/make_sample_clip.py) of this length and size, built once and kept.

    make_clip is deterministic, so a clip in the cache is the clip these arguments give.
    """
    path = CACHE / f"clip-{size[0]}x{size[1]}-{fps}fps-{seconds:g}s.mp4"
    if not path.exists():
        partial = path.with_name(path.stem + ".partial.mp4")
        make_clip(partial, seconds=seconds, fps=fps, size=size)
        partial.with_name(partial.name + ".truth.json").replace(path.with_name(path.name + ".truth.json"))
        partial.replace(path)
    return path


def probe_plugin_site() -> Path | None:
    """A plugin folder that registers pipeline_probe, when the installed package does not yet.

    Analytics are discovered through the ``lva.analytics`` entry points of installed
    distributions. Until pyproject.toml lists pipeline_probe (and the package is reinstalled),
    a ``*.dist-info`` with that one entry point on the core's PYTHONPATH registers it, the way
    tests/fixtures/plugin_site registers the test plugins. None when it is already registered.
    """
    if any(ep.name == "pipeline_probe" for ep in entry_points(group="lva.analytics")):
        return None
    site = CACHE / "plugin_site"
    info = site / "lva_bench_probe-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lva-bench-probe\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text(f"[lva.analytics]\n{PROBE_ENTRY_POINT}\n")
    return site


@dataclass
class Stack:
    triton: Service
    core: Service
    facade: Service
    log_dir: Path
    probe_from_plugin_site: bool

    @property
    def base_url(self) -> str:
        return f"http://{self.facade.address}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.facade.address}/1/ws"

    @property
    def core_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.core.metrics_port}/metrics"

    def services(self) -> dict[str, Service]:
        return {"core": self.core, "facade": self.facade, "triton": self.triton}

    def rss_kib(self) -> dict[str, int]:
        """Resident memory of each service's process tree (Triton: server and backend stubs)."""
        return {name: procs.tree_rss_kib(s.proc.pid) for name, s in self.services().items()}

    def cpu_seconds(self) -> dict[str, float]:
        return {name: procs.tree_cpu_seconds(s.proc.pid) for name, s in self.services().items()}

    def stop(self) -> None:
        for service in (self.facade, self.core, self.triton):
            service.stop(signal.SIGTERM)


def start_stack(log_dir: Path) -> Stack:
    log_dir.mkdir(parents=True, exist_ok=True)
    site = probe_plugin_site()
    triton = start_triton(log_dir)
    try:
        # The benchmark's clips live in the cache: the one directory its streams read files from.
        # No rate limit on stream creation: the create/delete cycles make streams faster than
        # the default allows, and what they measure is the agent, not its limiter.
        env = {
            "LVA_STREAMS__ALLOWED_FILE_DIRS": json.dumps([str(CACHE.resolve())]),
            "LVA_STREAMS__CREATE_RATE__PER_SECOND": "0",
        }
        core = start_core(log_dir, triton.address, {**env, "PYTHONPATH": str(site)} if site else env)
        try:
            facade = start_facade(log_dir, core.address)
        except BaseException:
            core.stop()
            raise
    except BaseException:
        triton.stop()
        raise
    return Stack(triton, core, facade, log_dir, site is not None)


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
