"""The benchmark suite against the real stack: ``python -m benchmarks.run [--quick] [--out DIR]``.

It starts its own Triton, core and facade (and an RTSP server for live cameras) on free ports,
measures what benchmarks/README.md describes, and writes ``<out>/<YYYY-MM-DD>T<HHMMSS>.json``
with a PNG beside it, plus ``latest.json`` and ``latest.png``. ``--quick`` is the CI smoke run
(about 4 minutes on two cores): small sizes, same measurements. ``--only a,b`` measures only
the sections named (``python -m benchmarks.run --list`` names them).

It never fails on a slow figure. The exit status is 1 only when a measurement could not be
taken (the suite is broken); the results written then say which one and why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import aiohttp
from tqdm import tqdm  # type: ignore[import-untyped]

from benchmarks import compare, fleet, measures
from benchmarks.api import Api
from benchmarks.plot import plot
from benchmarks.stack import CACHE, TritonProbe, cached_clip, start_stack
from lva_testkit.paths import REPO
from lva_testkit.rtsp_server import RtspServer
from lva_testkit.rtsp_server import available as rtsp_available

KEEP_LOGS = 10
PACKAGES = ("luna-video-agent", "av", "numpy", "grpcio", "protobuf", "aiohttp", "tritonclient", "matplotlib")


class Progress:
    """A tqdm bar over the measurements; ``tick(label)`` finishes the current step and names the next."""

    def __init__(self, total: int) -> None:
        self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.open = False

    def tick(self, label: str) -> None:
        if self.open:
            self.bar.update(1)
        self.open = True
        self.bar.set_description(label)

    def close(self) -> None:
        if self.open:
            self.bar.update(1)
        self.bar.set_description("done")
        # The total is an estimate (the capacity search may stop early): end the bar full.
        self.bar.total = self.bar.n
        self.bar.refresh()
        self.bar.close()


Measure = Callable[[measures.Context], Awaitable[dict[str, Any]]]


def sections(compared: compare.Sizes) -> list[tuple[str, Measure, bool]]:
    """(name, measurement, whether it needs the RTSP server), in the order they run.

    A name of several parts joined by ``+`` is one measurement that returns those sections (the
    two capacity searches run step by step in turn, side by side).
    """
    return [
        ("model_only", measures.model_only, False),
        ("pipeline_efficiency", measures.pipeline, False),
        ("latency_live", measures.live_latency, True),
        ("time_to_first_event", measures.time_to_first_event, False),
        ("capacity", measures.capacity, True),
        ("efficiency_real", lambda ctx: compare.efficiency_real(ctx, compared), False),
        ("capacity_vs_limit+vs_plain_loop", lambda ctx: compare.capacities(ctx, compared), True),
        ("leaks.cycles", measures.leak_cycles, False),
        ("leaks.soak", measures.soak, True),
        ("fleet", fleet.section, False),  # skips its camera parts without RTSP itself
    ]


def section_names(compared: compare.Sizes) -> list[str]:
    return [part for name, _, _ in sections(compared) for part in name.split("+")]


def selected(name: str, only: set[str] | None) -> bool:
    """Whether a measurement runs: all without --only, else those with a part named (or a parent)."""
    if only is None:
        return True
    return any(part in only or part.split(".")[0] in only for part in name.split("+"))


def estimated_steps(
    sizes: measures.Sizes, compared: compare.Sizes, rtsp: bool, only: set[str] | None = None
) -> int:
    steps = 3  # clips, services, writing
    counts = {
        "model_only": 2 * len(sizes.model_batches),
        "pipeline_efficiency": 3 * len(sizes.pipeline_streams) * sizes.pipeline_repeats,
        "time_to_first_event": 1 + 1,  # file, rtsp
        "leaks.cycles": 1,
        "efficiency_real": 3 * len(compared.streams) * compared.repeats,
        "fleet": fleet.steps(sizes, rtsp),
    }
    if rtsp:
        counts.update(
            {
                "latency_live": len(sizes.latency_streams),
                "capacity": sizes.capacity_max_runs,
                "leaks.soak": 1,
                "capacity_vs_limit+vs_plain_loop": 1 + 2 * compared.capacity_max_runs,
            }
        )
    return steps + sum(n for name, n in counts.items() if selected(name, only))


def _git(*args: str) -> str | None:
    # Read-only: --no-optional-locks keeps `git status` from refreshing the index.
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _triton_env_versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for info in sorted((REPO / ".venv-triton").glob("lib/python*/site-packages/*.dist-info")):
        name, _, rest = info.name.removesuffix(".dist-info").partition("-")
        if name.lower() in ("nvidia_pytriton", "numpy", "onnxruntime", "onnxruntime_gpu"):
            found[name.lower()] = rest
    return found


def machine_info() -> dict[str, Any]:
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    status = _git("status", "--porcelain")
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_total_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "triton_env": _triton_env_versions(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "load_average_start": load_average(),
    }


async def run_suite(
    sizes: measures.Sizes,
    mode: str,
    progress: Progress,
    compared: compare.Sizes | None = None,
    only: set[str] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Every measurement (or those ``only`` names); (results, whether all of them could be taken)."""
    compared = compared or (compare.Sizes.quick() if mode == "quick" else compare.Sizes())
    command = "python -m benchmarks.run" + (" --quick" if mode == "quick" else "")
    results: dict[str, Any] = {
        "schema": 1,
        "mode": mode,
        "command": command + (f" --only {','.join(sorted(only))}" if only else ""),
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "sizes": {**asdict(sizes), "compare": asdict(compared)},
        "errors": {},
    }
    if only:
        results["only"] = sorted(only)
    started = time.monotonic()
    progress.tick("clips")
    pipeline_clip = cached_clip(sizes.pipeline_clip_s)
    live_clip = cached_clip(sizes.live_clip_s, fps=sizes.live_fps)

    progress.tick("starting Triton, core, facade")
    log_dir = CACHE / "logs" / datetime.now().strftime("%Y-%m-%dT%H%M%S")
    prune_logs(CACHE / "logs", keep=KEEP_LOGS - 1)
    stack = await asyncio.to_thread(start_stack, log_dir)
    results["logs"] = str(log_dir.relative_to(REPO))
    cameras: RtspServer | None = None
    ctx: measures.Context | None = None
    ok = True
    try:
        if rtsp_available():
            server = RtspServer(live_clip, log_dir / "rtsp.log", "/camera", shared=False)
            cameras = await asyncio.to_thread(server.start)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            api = Api(http, stack.base_url, stack.ws_url)
            triton = TritonProbe(stack.triton.address)
            try:
                if "pipeline_probe" not in await api.analytics():
                    raise RuntimeError("the core does not list the pipeline_probe analytic")
                results["machine"]["triton_server"] = await triton.server_version()
                ctx = measures.Context(
                    stack, api, triton, sizes, pipeline_clip, live_clip, cameras, progress.tick
                )
                for name, measure, needs_rtsp in sections(compared):
                    if not selected(name, only):
                        continue
                    parts = name.split("+")
                    if needs_rtsp and cameras is None:
                        for part in parts:
                            _put(results, part, {"skipped": "GStreamer's RTSP server is not installed"})
                        continue
                    if name == "leaks.cycles":
                        progress.tick("leak cycles")
                    elif name == "leaks.soak":
                        progress.tick("soak")
                    try:
                        measured = await measure(ctx)
                        if len(parts) == 1:
                            _put(results, name, measured)
                        else:
                            for part in parts:
                                _put(results, part, measured[part])
                    except Exception as exc:
                        ok = False
                        results["errors"][name] = "".join(traceback.format_exception(exc))[-4000:]
                        await _clean(api)
            finally:
                await triton.close()
    finally:
        if cameras is not None:
            cameras.stop()
        await asyncio.to_thread(stack.stop)
    results["rtsp_server_restarts"] = ctx.camera_restarts if ctx is not None else None
    results["machine"]["load_average_end"] = load_average()
    results["duration_s"] = round(time.monotonic() - started, 1)
    derive(results)
    results["summary"] = summarize(results)
    return results, ok


def prune_logs(folder: Path, keep: int) -> None:
    """Only the newest runs' service logs stay in the cache (a full run's core log is megabytes)."""
    runs = sorted(p for p in folder.glob("*") if p.is_dir())
    for old in runs[: max(0, len(runs) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def _put(results: dict[str, Any], dotted: str, value: dict[str, Any]) -> None:
    node = results
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


async def _clean(api: Api) -> None:
    """After a failed measurement: delete what it left, so that the next one starts clean."""
    # The stack may be what failed; then the next measurement says so.
    with contextlib.suppress(Exception):
        await api.delete_all()


def derive(results: dict[str, Any]) -> None:
    """Figures that need two sections: the efficiency the model alone, or the CPU, would allow.

    If the trivial model were the pipeline's only cost, the core could not exceed the model-only
    throughput (its best batch size): that over bare decoding is a ceiling on the efficiency, and
    a pipeline close to it is limited by the model rather than by the agent.

    The CPU ceiling: with every usable core busy, the stack (core, Triton, facade) could process
    at most cores / (its CPU per frame) frames a second. A run near that mark is CPU-bound: it
    gets faster only by spending less CPU per frame, not by overlapping more.
    """
    model_runs = (results.get("model_only") or {}).get("runs") or []
    best = max((r["items_per_s"] for r in model_runs if r["model"] == measures.PROBE_MODEL), default=None)
    cores = (results.get("machine") or {}).get("cpus_usable")
    for run in (results.get("pipeline_efficiency") or {}).get("runs") or []:
        baseline = run.get("baseline_fps")
        run["efficiency_ceiling_model_only"] = round(best / baseline, 3) if best and baseline else None
        cpu = run.get("cpu_ms_per_frame") or {}
        stack_ms = sum(cpu.get(name) or 0.0 for name in ("core", "triton", "facade"))
        run["efficiency_ceiling_cpu"] = (
            round(cores * 1000.0 / stack_ms / baseline, 3) if cores and baseline and stack_ms > 0 else None
        )


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures (README's table), each None when its measurement is missing."""

    def get(*path: Any) -> Any:
        node: Any = results
        for key in path:
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                return None
        return node

    runs = get("pipeline_efficiency", "runs") or []
    live = get("latency_live", "runs") or []
    real = get("efficiency_real", "runs") or []
    return {
        "efficiency": {str(r["streams"]): r["efficiency"] for r in runs},
        "efficiency_with_delivery": {str(r["streams"]): r["efficiency_with_delivery"] for r in runs},
        "efficiency_ceiling_model_only": {
            str(r["streams"]): r.get("efficiency_ceiling_model_only") for r in runs
        },
        "efficiency_ceiling_cpu": {str(r["streams"]): r.get("efficiency_ceiling_cpu") for r in runs},
        "batching_efficiency": {str(r["streams"]): r["batching"]["efficiency"] for r in runs},
        "core_stages_ms": {str(r["streams"]): r.get("core_stages") for r in runs},
        "added_latency_ms": {
            f"live_x{r['streams']}": {"p50": r["added_p50"], "p99": r["added_p99"]} for r in live
        },
        "model_compute_ms": {f"live_x{r['streams']}": r["model_compute_ms"] for r in live},
        "time_to_first_event_s": {
            source: get("time_to_first_event", source, "after_create_s", "p50") for source in ("file", "rtsp")
        },
        "capacity_streams": get("capacity", "capacity"),
        "rss_growth_mib": {
            "cycles": {s: get("leaks", "cycles", "growth", s, "growth_mib") for s in ("core", "facade")},
            "soak": {s: get("leaks", "soak", "growth", s, "growth_mib") for s in ("core", "facade")},
        },
        "efficiency_real": {str(r["streams"]): r["efficiency"] for r in real},
        "agent_overhead_ms": {str(r["streams"]): r["agent_overhead_ms"] for r in real},
        "real_clip_kbps": get("efficiency_real", "clip", "video_kbps"),
        "capacity_vs_limit": {
            "capacity": get("capacity_vs_limit", "capacity"),
            "limit_cameras": get("capacity_vs_limit", "limit_cameras"),
            "ratio": get("capacity_vs_limit", "ratio"),
        },
        "vs_plain_loop": {
            "product": get("vs_plain_loop", "product", "capacity"),
            "plain_loop": get("vs_plain_loop", "plain_loop", "capacity"),
            "ratio": get("vs_plain_loop", "ratio"),
            "cpu_ms_per_analysed_frame": get("vs_plain_loop", "cpu_ms_per_analysed_frame"),
        },
        "fleet": get("fleet", "summary"),
        "model_only_items_per_s": {
            f"{r['model']}_x{r['batch']}": r["items_per_s"] for r in get("model_only", "runs") or []
        },
    }


def write(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    import json

    out.mkdir(parents=True, exist_ok=True)
    stem = datetime.now().strftime("%Y-%m-%dT%H%M%S")
    json_path, png_path = out / f"{stem}.json", out / f"{stem}.png"
    # Through a temporary name: a reader never sees half a file.
    tmp = out / f"{stem}.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    tmp.replace(json_path)
    plot(results, png_path)
    shutil.copyfile(json_path, out / "latest.json")
    shutil.copyfile(png_path, out / "latest.png")
    return json_path, png_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, about 4 minutes (the CI smoke run)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    parser.add_argument(
        "--only", default=None, help="comma-separated sections to measure (default: all; see --list)"
    )
    parser.add_argument("--list", action="store_true", help="print the sections' names and exit")
    args = parser.parse_args(argv)
    sizes = measures.Sizes.quick() if args.quick else measures.Sizes()
    compared = compare.Sizes.quick() if args.quick else compare.Sizes()
    names = section_names(compared)
    if args.list:
        print("\n".join(names))
        return 0
    only = {n.strip() for n in args.only.split(",") if n.strip()} if args.only else None
    unknown = sorted((only or set()) - set(names) - {n.split(".")[0] for n in names})
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; the sections: {', '.join(names)}")
    mode = "quick" if args.quick else "full"
    progress = Progress(estimated_steps(sizes, compared, rtsp_available(), only))
    try:
        results, ok = asyncio.run(run_suite(sizes, mode, progress, compared, only))
        progress.tick("writing results")
        json_path, png_path = write(results, args.out)
    finally:
        progress.close()
    print(f"{json_path}\n{png_path}")
    for name, error in results["errors"].items():
        print(f"FAILED {name}:\n{error}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
