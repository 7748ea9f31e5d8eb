"""The figures a user can compare: the stack against what cannot be avoided, and against a plain loop.

Three sections of ``make bench`` (benchmarks/README.md explains them), all on the realistic clip
(``tools/make_real_clip.py``: 720p25 at about 3 Mb/s, real photographs, motion, sensor noise)
and the real person detector (``people_counter`` on ``person_detector``):

- ``efficiency_real`` (with ``agent_overhead_ms``): file streams, every frame analysed, against
  bare decoding of the same clip and the detector alone in Triton, side by side, per frame;
- ``capacity_vs_limit``: the live-camera capacity step of ``benchmarks/measures.py`` on that clip,
  against the cameras the machine could serve if its cores did nothing but decode and detect;
- ``vs_plain_loop``: the same cameras served by ``benchmarks/plain_loop.py``, what a user writes
  without the agent, capacity and CPU per analysed frame, the two searches run step by step in
  turn.

Nothing here asserts a speed: a slow figure is a result. A section raises only when it cannot
measure (a service died, a stream or a camera did not start).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import av
import numpy as np

from benchmarks import measures
from benchmarks.api import people_counter, stream_body, timestamp
from benchmarks.stack import CACHE
from benchmarks.stats import median, rnd
from lva_core.inference.frame_format import FrameFormat
from lva_core.runtime import procfs
from lva_testkit.paths import REPO
from lva_testkit.rtsp_server import RtspServer
from tools.make_real_clip import bitrate, cached_real_clip

DETECTOR = measures.DETECTOR_MODEL
EFFICIENCY_TARGET = 0.85
CAPACITY_TARGET = 0.8
IMAGES = 8  # distinct frames of the clip the model-alone runs cycle through


@dataclass(frozen=True)
class Sizes:
    """How much of everything: ``--quick`` (CI smoke, about a minute of the quick suite) or the full suite."""

    clip_s: float = 10.0
    clip_kbps: int = 3000
    fps: int = 25  # the clip's (the cameras') frame rate
    every: int = 5  # cameras analysed at 5 fps
    streams: tuple[int, ...] = (1, 4, 16)
    repeats: int = 2
    model_seconds: float = 5.0
    capacity_steps: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24, 32)
    capacity_max_runs: int = 8
    capacity_bisect: bool = True
    capacity_window_s: float = 20.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            clip_s=2.0,
            streams=(1, 2),
            repeats=1,
            model_seconds=1.0,
            capacity_steps=(2,),
            capacity_max_runs=1,
            capacity_bisect=False,
            capacity_window_s=3.0,
        )


@dataclass
class Real:
    """The realistic clip and what the detector asks of it, shared by the sections."""

    clip: Path
    clip_info: dict[str, Any]
    fmt: FrameFormat  # the frame the detector declares in its config.pbtxt, what the core ships
    max_batch: int  # the largest batch the core builds: min(its max_batch, the model's)
    images: list[np.ndarray[Any, Any]]  # frames of the clip in that format, for the model alone


async def prepare(ctx: measures.Context, sizes: Sizes) -> Real:
    clip = await asyncio.to_thread(
        cached_real_clip, CACHE, sizes.clip_s, sizes.fps, (1280, 720), sizes.clip_kbps
    )
    info = bitrate(clip)
    info["path"] = str(clip.relative_to(REPO)) if clip.is_relative_to(REPO) else str(clip)
    info["target_kbps"] = sizes.clip_kbps
    info["method"] = (
        "video_kbps: the sum of the video packets' sizes (PyAV demuxing the file) over frames / fps; "
        "container_kbps: FFmpeg's own figure for the file"
    )
    fmt = await detector_format(ctx)
    response = await ctx.api.http.get(ctx.api.base_url + "/1/config")
    core_max_batch = int((await response.json())["triton"]["batching"]["max_batch"])
    max_batch = max(1, min(core_max_batch, await ctx.triton.max_batch_size(DETECTOR)))
    return Real(clip, info, fmt, max_batch, _images(clip, fmt, sizes.fps))


async def detector_format(ctx: measures.Context) -> FrameFormat:
    """The frame the detector declares, read as the core reads it (lva_core.inference.frame_format)."""
    from lva_core.inference.client import TritonClient
    from lva_core.inference.frame_format import frame_format

    client = TritonClient(ctx.stack.triton.address, shared_memory=False, pool_bytes=0, timeout=30.0)
    try:
        return frame_format(await client.model_info(DETECTOR))
    finally:
        await client.close()


def _images(clip: Path, fmt: FrameFormat, fps: int) -> list[np.ndarray[Any, Any]]:
    """IMAGES frames, two a second from the clip's start, converted by the core's own code."""
    from lva_core.pipeline.pixels import Converter, Pixels

    converter = Converter()
    images: list[np.ndarray[Any, Any]] = []
    with av.open(str(clip)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % max(1, fps // 2) == 0:
                whole = (0, 0, int(frame.width), int(frame.height))
                images.append(np.ascontiguousarray(Pixels(frame, whole, converter).array(fmt)))
            if len(images) == IMAGES:
                break
    return images


def format_args(fmt: FrameFormat) -> list[str]:
    """``fmt`` on benchmarks/baseline.py's command line."""
    size = ["--size", f"{fmt.size[0]}x{fmt.size[1]}"] if fmt.size else []
    return ["--format", fmt.layout, "--resize", fmt.resize, *size]


def bare(clip: Path, streams: int, every: int, fmt: FrameFormat) -> dict[str, Any]:
    """benchmarks/baseline.py on the clip: N decoding threads, converting as the core does."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.baseline",
            str(clip),
            "--streams",
            str(streams),
            "--every",
            str(every),
            *format_args(fmt),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result = dict(json.loads(out.stdout))
    result["cpu_ms_per_frame"] = rnd(1000 * result["cpu_seconds"] / result["frames"])
    return result


def triton_cpu(ctx: measures.Context) -> float:
    return procfs.tree_cpu_seconds(ctx.stack.triton.proc.pid)


async def model_alone(
    ctx: measures.Context, real: Real, batches: Sequence[int], seconds: float
) -> dict[int, dict[str, Any]]:
    """The detector alone, per batch size: Triton's CPU (its process tree, /proc) per item.

    Driven as ``measures.model_only`` drives a model (the core's own client, system shared
    memory, two requests in flight) on frames of the clip in the format the detector declares,
    so that Triton does what it does in the stack and nothing else. The CPU is counted after a
    warm-up request, over a fixed time, and divided by the items Triton's statistics counted.
    """
    from lva_core.inference.client import TritonClient

    client = TritonClient(ctx.stack.triton.address, shared_memory=True, pool_bytes=256 << 20, timeout=30.0)
    await client.start()
    try:
        info = await client.model_info(DETECTOR)
        runs = {}
        for wanted in batches:
            batch = min(wanted, info.max_batch_size) if info.batches else 1
            runs[wanted] = await _model_run(ctx, client, info, real.images, batch, seconds)
        return runs
    finally:
        await client.close()


async def _model_run(
    ctx: measures.Context,
    client: Any,
    info: Any,
    images: Sequence[np.ndarray[Any, Any]],
    batch: int,
    seconds: float,
) -> dict[str, Any]:
    shape = tuple(int(v) for v in images[0].shape)
    turn = 0

    async def one() -> None:
        nonlocal turn
        staged = await client.stage(info, {"IMAGE": shape}, batch)
        try:
            target = staged.inputs["IMAGE"]
            for item in range(batch):  # the batcher's one copy into shared memory
                (target[item] if info.batches else target)[...] = images[(turn + item) % len(images)]
            turn += batch
            await client.infer_staged(staged, 30.0)
        finally:
            await client.release(staged)

    await one()  # warm-up: registers the shared memory region, wakes the model up
    before, cpu_before = await ctx.triton.stats(DETECTOR), triton_cpu(ctx)
    started = time.perf_counter()
    stop_at = started + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            await one()

    await asyncio.gather(worker(), worker())
    elapsed = time.perf_counter() - started
    cpu = triton_cpu(ctx) - cpu_before
    stats = (await ctx.triton.stats(DETECTOR)).since(before)
    items = int(stats["inferences"])
    return {
        "batch": batch,
        "items": items,
        "seconds": rnd(elapsed),
        "items_per_s": rnd(items / elapsed, 2),
        "triton_cpu_seconds": rnd(cpu),
        "cpu_ms_per_item": rnd(1000 * cpu / items) if items else None,
        "compute_infer_ms_per_item": rnd(stats["compute_infer_ms_per_item"]),
        "mean_batch": rnd(stats["mean_batch"]),
    }


# ---- efficiency on the realistic clip -----------------------------------------------------------


async def efficiency_real(ctx: measures.Context, sizes: Sizes) -> dict[str, Any]:
    """(bare decode + model alone) / stack, CPU per frame, every frame of N file streams analysed."""
    real = await prepare(ctx, sizes)
    runs = []
    for streams in sizes.streams:
        batch = min(streams, real.max_batch)
        repeats = []
        for repeat in range(sizes.repeats):
            # Interleaved, so that drift of a noisy machine hits every side alike.
            ctx.tick(f"real clip: decode baseline x{streams} #{repeat + 1}")
            base = await asyncio.to_thread(bare, real.clip, streams, 1, real.fmt)
            ctx.tick(f"real clip: stack x{streams} #{repeat + 1}")
            stack = await stack_run(ctx, real, streams)
            ctx.tick(f"real clip: detector alone x{batch} #{repeat + 1}")
            model = (await model_alone(ctx, real, [batch], sizes.model_seconds))[batch]
            repeats.append(_efficiency(base, stack, model))
        runs.append(
            {
                "streams": streams,
                "model_batch": batch,
                **{
                    key: rnd(median([r[key] for r in repeats]))
                    for key in (
                        "efficiency",
                        "agent_overhead_ms",
                        "decode_ms_per_frame",
                        "model_ms_per_frame",
                        "stack_ms_per_frame",
                        "core_ms_per_frame",
                        "triton_ms_per_frame",
                        "facade_ms_per_frame",
                        "core_beyond_decode_ms",
                        "triton_beyond_model_ms",
                    )
                },
                "efficiency_samples": [r["efficiency"] for r in repeats],
                "agent_overhead_samples_ms": [r["agent_overhead_ms"] for r in repeats],
                "stack_fps": rnd(median([r["stack"]["fps"] for r in repeats]), 1),
                "baseline_fps": rnd(median([r["baseline"]["fps"] for r in repeats]), 1),
                "stack_mean_batch": rnd(median([r["stack"]["triton"]["mean_batch"] or 0.0 for r in repeats])),
                "repeats": repeats,
            }
        )
    return {
        "target": EFFICIENCY_TARGET,
        "method": (
            "For N file streams of the realistic clip, every frame analysed by people_counter on "
            "person_detector, interleaved per repeat: (1) benchmarks/baseline.py, N threads decoding "
            "the clip and converting every frame to the detector's declared format as the core does "
            "(its CPU per frame: decode); (2) the stack, created paused and resumed together, CPU of "
            "the core's and Triton's process trees (/proc) per frame processed (stack); the facade, "
            "not in the frame path, is reported apart (its CPU is the benchmark's polling); (3) the "
            "detector alone in Triton at batch min(N, the largest batch the core builds), two "
            "requests in flight, Triton's CPU per item (model). efficiency = (decode + model) / "
            "stack; agent_overhead_ms = stack - decode - model. Medians over the repeats."
        ),
        "clip": real.clip_info,
        "frame_format": real.fmt.name,
        "max_batch": real.max_batch,
        "runs": runs,
    }


def _efficiency(base: dict[str, Any], stack: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    decode = float(base["cpu_ms_per_frame"])
    alone = float(model["cpu_ms_per_item"] or 0.0)
    per_frame = {k: 1000 * v / stack["frames"] for k, v in stack["cpu_seconds"].items()}
    total = per_frame["core"] + per_frame["triton"]
    return {
        "efficiency": rnd((decode + alone) / total) if total else None,
        "agent_overhead_ms": rnd(total - decode - alone),
        "decode_ms_per_frame": rnd(decode),
        "model_ms_per_frame": rnd(alone),
        "stack_ms_per_frame": rnd(total),
        "core_ms_per_frame": rnd(per_frame["core"]),
        "triton_ms_per_frame": rnd(per_frame["triton"]),
        "facade_ms_per_frame": rnd(per_frame["facade"]),
        "core_beyond_decode_ms": rnd(per_frame["core"] - decode),
        "triton_beyond_model_ms": rnd(per_frame["triton"] - alone),
        "baseline": base,
        "stack": stack,
        "model_alone": model,
    }


async def stack_run(ctx: measures.Context, real: Real, streams: int) -> dict[str, Any]:
    """N paused file streams of the clip, resumed together; CPU and frames until the last is done."""
    api = ctx.api
    body = stream_body(real.clip, [people_counter(1)], status="pause", name="bench-real")
    ids = [await api.create(body) for _ in range(streams)]
    try:
        before, cpu_before = await ctx.triton.stats(DETECTOR), ctx.stack.cpu_seconds()
        resumed = time.time()
        await asyncio.gather(*(api.patch(i, "pending") for i in ids))
        records = await api.wait_final(ids, timeout=600, poll=0.2)
        cpu_after = ctx.stack.cpu_seconds()
        triton = (await ctx.triton.stats(DETECTOR)).since(before)
    finally:
        for stream_id in ids:
            await api.delete(stream_id)
    bad = [r for r in records if r["status"] != "done"]
    if bad:
        raise RuntimeError(f"stream on the realistic clip ended {bad[0]['status']}: {bad[0]['error']}")
    finished = max(timestamp(r["last_update_time"]) for r in records)
    frames = sum(int(r["statistics"]["frames_processed"]) for r in records)
    seconds = finished - resumed
    return {
        "streams": streams,
        "frames": frames,
        "frames_decoded": sum(int(r["statistics"]["frames_decoded"]) for r in records),
        "seconds": round(seconds, 4),
        "fps": frames / seconds if seconds > 0 else 0.0,
        "cpu_seconds": {k: round(cpu_after[k] - cpu_before[k], 3) for k in cpu_after},
        "triton": triton,
    }


# ---- capacity against the physical limit, and against a plain loop ------------------------------


@dataclass
class Search:
    """measures.capacity's search, one step at a time: the steps in order until one fails, then
    bisection between the last count that passed and the first that did not."""

    steps: tuple[int, ...]
    max_runs: int
    bisect: bool
    tried: dict[int, dict[str, Any]] = field(default_factory=dict)
    best: int = 0
    worst: int | None = None

    def next(self) -> int | None:
        if len(self.tried) >= self.max_runs:
            return None
        if self.worst is None:
            return next((n for n in self.steps if n not in self.tried), None)
        if self.bisect and self.worst - self.best > 1:
            return (self.best + self.worst) // 2
        return None

    def record(self, streams: int, result: dict[str, Any]) -> None:
        self.tried[streams] = result
        if result["pass"]:
            self.best = max(self.best, streams)
        else:
            self.worst = streams if self.worst is None else min(self.worst, streams)

    def summary(self) -> dict[str, Any]:
        return {
            "capacity": self.best,
            # True when every count tried passed: the true capacity is at least this.
            "lower_bound_only": self.worst is None,
            "steps": [self.tried[n] for n in sorted(self.tried)],
        }


Step = Callable[[measures.Context, int, Sizes], Awaitable[dict[str, Any]]]


async def capacities(ctx: measures.Context, sizes: Sizes) -> dict[str, dict[str, Any]]:
    """``capacity_vs_limit`` and ``vs_plain_loop``: live cameras of the realistic clip."""
    real = await prepare(ctx, sizes)
    log_dir = ctx.stack.log_dir
    server = RtspServer(real.clip, log_dir / "rtsp-real.log", "/camera", shared=False)
    await asyncio.to_thread(server.start)
    cameras = dataclasses.replace(ctx, cameras=server, live_clip=real.clip, camera_restarts=0)
    cores = len(os.sched_getaffinity(0))
    try:
        ctx.tick("physical limit: decode and detector alone")
        decode = await asyncio.to_thread(bare, real.clip, max(2, cores), sizes.every, real.fmt)
        model = (await model_alone(ctx, real, [real.max_batch], sizes.model_seconds))[real.max_batch]
        analysed = sizes.fps / sizes.every
        decode_ms = float(decode["cpu_ms_per_frame"]) * sizes.fps  # per camera-second
        model_ms = float(model["cpu_ms_per_item"] or 0.0) * analysed
        limit = cores * 1000.0 / (decode_ms + model_ms)
        product = Search(sizes.capacity_steps, sizes.capacity_max_runs, sizes.capacity_bisect)
        plain = Search(sizes.capacity_steps, sizes.capacity_max_runs, sizes.capacity_bisect)
        searches: list[tuple[str, Search, Step]] = [
            ("product", product, product_step),
            ("plain loop", plain, plain_step),
        ]
        while True:
            progressed = False
            for name, search, step in searches:  # in turn: drift hits both alike
                streams = search.next()
                if streams is None:
                    continue
                progressed = True
                ctx.tick(f"real cameras: {name} x{streams}")
                search.record(streams, await attempt(cameras, step, streams, sizes))
            if not progressed:
                break
    finally:
        server.stop()
    found = product.summary()
    ratio = found["capacity"] / limit if limit > 0 else None
    cpu_product, cpu_plain, common = _cpu_at_common_step(product, plain)
    plain_found = plain.summary()
    method_capacity = (
        f"Live 720p{sizes.fps} RTSP cameras of the realistic clip (its own RTSP server, a media per "
        f"client), every {sizes.every}th frame into people_counter on person_detector; the verdict "
        f"of measures.capacity (frame age p99 < {measures.AGE_LIMIT_S:g} s, every stream decoding "
        f">= {measures.RATE_SLACK:.0%} of {sizes.fps} fps and analysing >= {measures.RATE_SLACK:.0%} "
        f"of {analysed:g} fps) over {sizes.capacity_window_s:g} s; steps {list(sizes.capacity_steps)} "
        "until one fails" + (", then bisection" if sizes.capacity_bisect else "")
    )
    return {
        "capacity_vs_limit": {
            "target": CAPACITY_TARGET,
            "method": (
                method_capacity + ". limit = usable cores / (decode + detector CPU per camera-second), "
                f"measured in the same run: benchmarks/baseline.py decoding the clip in {max(2, cores)} "
                f"threads and converting every {sizes.every}th frame as the core does, x {sizes.fps} "
                f"frames a second; the detector alone in Triton at batch {real.max_batch} (its cheapest "
                f"per item), Triton's CPU per item x {analysed:g}. The RTSP server's own CPU is not in "
                "the limit (it is reported per step). ratio = capacity / limit."
            ),
            "clip": real.clip_info,
            "frame_format": real.fmt.name,
            "cores": cores,
            "decode": {**decode, "ms_per_camera_second": rnd(decode_ms, 2)},
            "model_alone": {**model, "ms_per_camera_second": rnd(model_ms, 2)},
            "limit_cameras": rnd(limit, 2),
            **found,
            "ratio": rnd(ratio),
            "rtsp_server_restarts": cameras.camera_restarts,
        },
        "vs_plain_loop": {
            "method": (
                method_capacity + ", for the product and for benchmarks/plain_loop.py (a process with a "
                "thread per camera: PyAV decoding over RTSP/TCP, the same 1-in-5 sampling, "
                "frame.to_ndarray('rgb24'), one shared ONNX Runtime session of the same network "
                "(person_detector/1/ssdlite.onnx), no batching), the two searches in turn, step by step. "
                "cpu_ms_per_analysed_frame: each one's CPU (product: core + Triton; plain loop: its "
                "process) over the window / frames analysed, at the largest count both passed (or the "
                "smallest both tried). ratio = product capacity / plain loop capacity."
            ),
            "product": {"capacity": found["capacity"], "lower_bound_only": found["lower_bound_only"]},
            "plain_loop": plain_found,
            "ratio": rnd(found["capacity"] / plain_found["capacity"]) if plain_found["capacity"] else None,
            "cpu_ms_per_analysed_frame": {"cameras": common, "product": cpu_product, "plain_loop": cpu_plain},
            "rtsp_server_restarts": cameras.camera_restarts,
        },
    }


def _cpu_at_common_step(product: Search, plain: Search) -> tuple[float | None, float | None, int | None]:
    both = sorted(set(product.tried) & set(plain.tried))
    if not both:
        return None, None, None
    passed = [n for n in both if product.tried[n]["pass"] and plain.tried[n]["pass"]]
    at = passed[-1] if passed else both[0]
    return (
        product.tried[at].get("cpu_ms_per_analysed_frame"),
        plain.tried[at].get("cpu_ms_per_analysed_frame"),
        at,
    )


async def attempt(ctx: measures.Context, step: Step, streams: int, sizes: Sizes) -> dict[str, Any]:
    """One step, measured again once if the RTSP server died under it (as measures.capacity does)."""
    for retry in (False, True):
        ctx.ensure_cameras()
        try:
            return await step(ctx, streams, sizes)
        except (RuntimeError, TimeoutError) as exc:
            await ctx.api.delete_all()
            if not retry and ctx.ensure_cameras():
                continue
            # Cameras that do not all start (or keep running) in time: not real time either.
            return {"streams": streams, "pass": False, "error": f"{type(exc).__name__}: {exc}"}
    raise AssertionError("unreachable")


def _cpu_figures(
    samples: Sequence[tuple[float, dict[str, dict[str, Any]]]],
    cpu: Sequence[dict[str, float]],
    paying: Sequence[str],
    streams: int,
) -> dict[str, Any]:
    """CPU over the window: per analysed frame (of the processes in ``paying``) and per camera-second."""
    (t0, first), (t1, last) = samples[0], samples[-1]
    analysed = sum(
        int(end["statistics"]["frames_processed"])
        - int(first.get(key, end)["statistics"]["frames_processed"])
        for key, end in last.items()
    )
    spent = {name: cpu[-1][name] - cpu[0][name] for name in cpu[0]}
    camera_seconds = max(t1 - t0, 1e-9) * streams
    paid = sum(spent[name] for name in paying)
    return {
        "frames_analysed": analysed,
        "cpu_ms_per_analysed_frame": rnd(1000 * paid / analysed) if analysed else None,
        "cpu_ms_per_camera_second": {name: rnd(1000 * v / camera_seconds, 2) for name, v in spent.items()},
        "cpu_busy_cores": rnd(paid / max(t1 - t0, 1e-9), 2),
    }


def _rtsp_cpu(ctx: measures.Context) -> float:
    cameras = ctx.cameras
    return procfs.tree_cpu_seconds(cameras.proc.pid) if cameras is not None and cameras.proc else 0.0


async def product_step(ctx: measures.Context, streams: int, sizes: Sizes) -> dict[str, Any]:
    """measures.capacity's step on the realistic cameras, with the CPU of every process over the window."""
    api = ctx.api
    await asyncio.sleep(2.0)  # the RTSP server tears down the previous step's medias
    body = stream_body(
        ctx.camera_url, [people_counter(1)], live=True, every=sizes.every, name="bench-real-capacity"
    )
    ids = await measures.create_many(api, body, streams)
    samples: list[tuple[float, dict[str, dict[str, Any]]]] = []
    cpu: list[dict[str, float]] = []
    try:
        await measures.wait_cameras_running(ctx, ids, timeout=60)
        await asyncio.sleep(2.0)  # the detector's first batches and the decoders' catch-up
        before = await ctx.triton.stats(DETECTOR)
        wanted = set(ids)
        stop_at = time.monotonic() + sizes.capacity_window_s
        while True:
            now = time.monotonic()
            listed = {s["stream_id"]: s for s in await api.list_streams() if s["stream_id"] in wanted}
            samples.append((now, listed))
            cpu.append({**ctx.stack.cpu_seconds(), "rtsp_server": _rtsp_cpu(ctx)})
            if now >= stop_at:
                break
            await asyncio.sleep(0.5)
        triton = (await ctx.triton.stats(DETECTOR)).since(before)
        if ctx.cameras is not None and not ctx.cameras.alive:
            raise RuntimeError("the RTSP server aborted during the measurement window")
    finally:
        for stream_id in ids:
            await api.delete(stream_id)
    verdict = measures.capacity_verdict(streams, samples, sizes.fps, sizes.fps / sizes.every)
    return {
        **verdict,
        **_cpu_figures(samples, cpu, ("core", "triton"), streams),
        "mean_batch": rnd(triton["mean_batch"]),
    }


async def plain_step(ctx: measures.Context, streams: int, sizes: Sizes) -> dict[str, Any]:
    """The same step served by benchmarks/plain_loop.py: its counters judged by the same verdict."""
    await asyncio.sleep(2.0)  # the RTSP server tears down the previous step's medias
    samples: list[tuple[float, dict[str, dict[str, Any]]]] = []
    cpu: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="plain-loop-") as scratch:
        status = Path(scratch) / "status.json"
        proc, log = _spawn_plain_loop(ctx, status, streams, sizes.every)
        try:
            body = await _plain_running(ctx, proc, status, timeout=60)
            await asyncio.sleep(2.0)  # as for the product: past the first frames
            stop_at = time.monotonic() + sizes.capacity_window_s
            while True:
                body = _read_status(status) or body
                # Timed by the loop's own clock (CLOCK_MONOTONIC, the same in every process): its
                # counters are as of that moment.
                samples.append((float(body["time"]), _as_listed(body)))
                cpu.append({"plain_loop": procfs.tree_cpu_seconds(proc.pid), "rtsp_server": _rtsp_cpu(ctx)})
                if time.monotonic() >= stop_at:
                    break
                await asyncio.sleep(0.5)
            if ctx.cameras is not None and not ctx.cameras.alive:
                raise RuntimeError("the RTSP server aborted during the measurement window")
        finally:
            proc.kill()
            proc.wait(10)
            log.close()
    verdict = measures.capacity_verdict(streams, samples, sizes.fps, sizes.fps / sizes.every)
    return {
        **verdict,
        **_cpu_figures(samples, cpu, ("plain_loop",), streams),
        "onnxruntime": body.get("onnxruntime"),
        "errors": sorted({c["error"] for c in body["cameras"] if c["error"]}),
    }


def _spawn_plain_loop(
    ctx: measures.Context, status: Path, streams: int, every: int
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """The plain loop on ``streams`` cameras, its output appended to the run's plain-loop.log."""
    log = open(ctx.stack.log_dir / "plain-loop.log", "ab")  # noqa: SIM115 - the caller closes it
    command = [sys.executable, "-m", "benchmarks.plain_loop", "--status", str(status), "--every", str(every)]
    urls = [ctx.camera_url] * streams
    return subprocess.Popen([*command, *urls], cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log


def _read_status(path: Path) -> dict[str, Any] | None:
    """The loop's last status, None before its first one."""
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def _as_listed(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The loop's counters in the shape of the core's stream list, for measures.capacity_verdict."""
    keys = ("frames_decoded", "frames_processed", "frames_dropped", "frame_age")
    return {
        str(index): {"status": camera["status"], "statistics": {k: camera[k] for k in keys}}
        for index, camera in enumerate(body["cameras"])
    }


async def _plain_running(
    ctx: measures.Context, proc: subprocess.Popen[bytes], status: Path, timeout: float
) -> dict[str, Any]:
    """Until every camera of the loop has analysed a frame; the status then."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the plain loop exited with {proc.returncode} (see plain-loop.log)")
        if ctx.cameras is not None and not ctx.cameras.alive:
            # Its cameras do not reconnect (a plain loop does not): the caller measures again.
            raise RuntimeError("the RTSP server aborted while the plain loop's cameras started")
        body = _read_status(status)
        if body is not None:
            failed = [c for c in body["cameras"] if c["status"] == "failure"]
            if failed:
                raise RuntimeError(f"a plain-loop camera failed: {failed[0]['error']}")
            if all(c["status"] == "in_progress" and c["frames_processed"] > 0 for c in body["cameras"]):
                return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"the plain loop's cameras did not start within {timeout:.0f} s")
        await asyncio.sleep(0.1)
