"""The measurements. Each returns a JSON-able section: its raw samples, derived figures and method.

None of them asserts anything about speed: a slow figure is a result, never a failure. They
raise only when the suite itself cannot do its job (a service died, a stream failed to start).

Why one file of over 400 lines: one function per measurement of ``make bench``, sharing the
stack, the watchers and the statistics helpers, in the order run.py calls them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from benchmarks import profile
from benchmarks.api import PROBE, Api, Watcher, people_counter, stream_body, subscribe, timestamp
from benchmarks.stack import TritonProbe
from benchmarks.stats import median, percentile, rnd, slope, summary
from lva_testkit.paths import REPO
from lva_testkit.rtsp_server import RtspServer
from lva_testkit.stack import Stack

PROBE_MODEL = "frame_stats"
DETECTOR_MODEL = "person_detector"
# Capacity: a stream counts as analysed in real time when its frames are at most this old when
# analysed (p99), and it keeps up with the source (decoding and analysis rates within RATE_SLACK).
AGE_LIMIT_S = 1.0
RATE_SLACK = 0.9


@dataclass(frozen=True)
class Sizes:
    """How much of everything: ``--quick`` (CI smoke, about 3 minutes) or the full suite."""

    pipeline_streams: tuple[int, ...] = (1, 4, 16)
    pipeline_clip_s: float = 10.0
    pipeline_repeats: int = 3
    model_seconds: float = 5.0
    model_batches: tuple[int, ...] = (1, 8)
    latency_streams: tuple[int, ...] = (1, 4, 8)
    latency_window_s: float = 20.0
    ttfe_trials: int = 10
    live_clip_s: float = 10.0
    live_fps: int = 25  # the cameras' frame rate (the live clip's)
    capacity_steps: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24, 32)
    capacity_max_runs: int = 8
    capacity_bisect: bool = True
    capacity_window_s: float = 20.0
    capacity_every: int = 5  # 720p25 analysed at 5 fps
    leak_cycles: int = 1000
    leak_samples: int = 20
    soak_s: float = 600.0
    soak_streams: int = 8
    soak_sample_s: float = 10.0
    # The fleet (benchmarks/fleet.py): failover trials per kind (SIGKILL, SIGTERM), the agents and
    # cameras they run on; file streams of the 1-against-2-agents throughput; the steady window
    # of the PostgreSQL load.
    fleet_agents: int = 3
    fleet_cameras: int = 12
    fleet_camera_clip_s: float = 4.0
    fleet_failovers: int = 20
    fleet_throughput_streams: int = 8
    fleet_throughput_clip_s: float = 20.0
    fleet_throughput_repeats: int = 3
    fleet_load_s: float = 30.0
    # Before the load's window: PostgreSQL flushes an idle backend's transaction counts within 10 s.
    fleet_load_settle_s: float = 11.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            pipeline_clip_s=2.0,
            pipeline_repeats=1,
            model_seconds=1.5,
            latency_streams=(1, 4),
            latency_window_s=4.0,
            ttfe_trials=2,
            capacity_steps=(1, 2, 4, 8),
            capacity_max_runs=4,
            capacity_bisect=False,
            capacity_window_s=4.0,
            leak_cycles=100,
            leak_samples=10,
            soak_s=30.0,
            soak_sample_s=2.0,
            fleet_cameras=6,
            fleet_failovers=2,
            fleet_throughput_streams=4,
            fleet_throughput_clip_s=10.0,
            fleet_throughput_repeats=1,
            fleet_load_s=5.0,
            fleet_load_settle_s=1.0,
        )


@dataclass
class Context:
    stack: Stack
    api: Api
    triton: TritonProbe
    sizes: Sizes
    pipeline_clip: Path
    live_clip: Path
    cameras: RtspServer | None
    tick: Callable[[str], None]  # advances the progress bar, naming what runs next

    camera_restarts: int = 0

    @property
    def camera_url(self) -> str:
        if self.cameras is None:
            raise RuntimeError("no RTSP server")
        return self.cameras.url

    def ensure_cameras(self) -> bool:
        """Restart the RTSP server if it died; whether it had to."""
        if self.cameras is None or self.cameras.alive:
            return False
        self.camera_restarts += 1
        self.cameras.restart()
        return True


async def create_many(api: Api, body: dict[str, Any], count: int, gap: float = 0.05) -> list[str]:
    """``count`` streams, one after another with a small gap, as cameras come online.

    A burst of simultaneous RTSP connections is not what the benchmark measures, and it is what
    makes GStreamer's RTSP server abort (it is restarted when it dies: Context.ensure_cameras).
    """
    ids = []
    for _ in range(count):
        ids.append(await api.create(body))
        await asyncio.sleep(gap)
    return ids


# ---- model only -------------------------------------------------------------------------------


def first_frame(clip: Path) -> np.ndarray[Any, Any]:
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
    raise RuntimeError(f"no frame in {clip}")


async def model_only(ctx: Context) -> dict[str, Any]:
    """Each model alone, driven the way the core drives it, with no stream in the way.

    The loop is the core's own client (lva_core.inference.client: shared memory, staged inputs)
    with two requests in flight, as the core's batcher allows: an equivalent of Triton's
    perf_analyzer, which the wheel does not ship, over the same transport as the pipeline.
    """
    from lva_core.inference.client import TritonClient
    from lva_core.inference.frame_format import frame_format
    from lva_core.pipeline.pixels import Pixels

    image = first_frame(ctx.live_clip)
    runs = []
    client = TritonClient(ctx.stack.triton.address, shared_memory=True, pool_bytes=256 << 20, timeout=30.0)
    await client.start()
    try:
        for model in (PROBE_MODEL, DETECTOR_MODEL):
            info = await client.model_info(model)
            # What the core ships this model: the frame in the format its config.pbtxt declares.
            shipped = np.ascontiguousarray(Pixels.of_rgb(image).array(frame_format(info)))
            for batch in ctx.sizes.model_batches:
                batch = min(batch, info.max_batch_size) if info.batches else 1
                ctx.tick(f"model {model} x{batch}")
                runs.append(await _model_loop(ctx, client, info, shipped, batch, concurrency=2))
    finally:
        await client.close()
    return {
        "method": (
            "Each model alone on one 720p frame of the clip in the frame format the model declares "
            "(what the core ships it), batches of 1 and 8, two requests in "
            "flight, through the core's own Triton client (system shared memory), for a fixed time. "
            "items_per_s is what the model can take; compute_infer comes from Triton's statistics."
        ),
        "frame_size": [int(image.shape[1]), int(image.shape[0])],
        "runs": runs,
    }


async def _model_loop(
    ctx: Context, client: Any, info: Any, image: np.ndarray[Any, Any], batch: int, concurrency: int
) -> dict[str, Any]:
    latencies: list[float] = []

    async def one() -> None:
        staged = await client.stage(info, {"IMAGE": image.shape}, batch)
        try:
            staged.inputs["IMAGE"][...] = image  # the batcher's one copy into shared memory
            started = time.perf_counter()
            await client.infer_staged(staged, 30.0)
            latencies.append(time.perf_counter() - started)
        finally:
            await client.release(staged)

    await one()  # warm-up: registers the shared-memory region, wakes the model up
    latencies.clear()
    before = await ctx.triton.stats(info.name)
    stop_at = time.perf_counter() + ctx.sizes.model_seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            await one()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    triton = (await ctx.triton.stats(info.name)).since(before)
    return {
        "model": info.name,
        "batch": batch,
        "concurrency": concurrency,
        "seconds": rnd(elapsed),
        "requests": len(latencies),
        "items_per_s": rnd(batch * len(latencies) / elapsed, 2),
        "request_latency_ms": summary(latencies, 1000.0, 2),
        "triton": triton,
    }


# ---- pipeline efficiency, batching, latency under load ------------------------------------------


async def pipeline(ctx: Context) -> dict[str, Any]:
    """Core frames/s against bare decoding of the same clip, side by side, for each stream count."""
    sizes = ctx.sizes
    config = await ctx.api.http.get(ctx.api.base_url + "/1/config")
    core_max_batch = int((await config.json())["triton"]["batching"]["max_batch"])
    model_max_batch = await ctx.triton.max_batch_size(PROBE_MODEL)
    runs = []
    for streams in sizes.pipeline_streams:
        repeats = []
        for repeat in range(sizes.pipeline_repeats):
            # Interleaved, so that drift of a noisy machine hits both sides alike.
            ctx.tick(f"decode baseline x{streams} #{repeat + 1}")
            base = bare_decode(ctx.pipeline_clip, streams)
            ctx.tick(f"core pipeline x{streams} #{repeat + 1}")
            core = await core_run(ctx, streams, deliver=False)
            ctx.tick(f"core pipeline + WebSocket x{streams} #{repeat + 1}")
            delivered = await core_run(ctx, streams, deliver=True)
            repeats.append({"baseline": base, "core": core, "core_with_delivery": delivered})
        max_batch = min(streams, core_max_batch, model_max_batch)
        ratios = [r["core"]["fps"] / r["baseline"]["fps"] for r in repeats]
        delivered_ratios = [r["core_with_delivery"]["fps"] / r["baseline"]["fps"] for r in repeats]
        mean_batch = median([r["core"]["triton"]["mean_batch"] or 0.0 for r in repeats]) or 0.0
        latencies = [x for r in repeats for x in r["core_with_delivery"].pop("latencies_s")]
        compute = median(
            [r["core_with_delivery"]["triton"]["compute_infer_ms_per_execution"] or 0.0 for r in repeats]
        )
        runs.append(
            {
                "streams": streams,
                "baseline_fps": rnd(median([r["baseline"]["fps"] for r in repeats]), 1),
                "core_fps": rnd(median([r["core"]["fps"] for r in repeats]), 1),
                "core_with_delivery_fps": rnd(median([r["core_with_delivery"]["fps"] for r in repeats]), 1),
                "efficiency": rnd(median(ratios)),
                "efficiency_samples": [rnd(x) for x in ratios],
                "efficiency_with_delivery": rnd(median(delivered_ratios)),
                "batching": {
                    "mean_batch": rnd(mean_batch),
                    "max_batch": max_batch,
                    "efficiency": rnd(mean_batch / max_batch if max_batch else None),
                    "batch_histogram": repeats[-1]["core"]["triton"]["batch_histogram"],
                },
                "latency_saturated_ms": {
                    **latency_section(latencies, compute),
                    "samples_ms": [round(x * 1000, 2) for x in latencies],
                },
                "cpu_ms_per_frame": cpu_per_frame(repeats),
                "core_stages": median_stages([r["core"]["core_stages"] for r in repeats]),
                "repeats": repeats,
            }
        )
    return {
        "target": 0.9,
        "method": (
            "For N streams: N threads of bare PyAV decode + rgb24 of the clip in one process "
            "(benchmarks/baseline.py), then N file streams of the same clip in the core (every frame "
            "sampled, analytic pipeline_probe on the trivial model frame_stats), created paused and "
            "resumed together; core frames/s = frames processed / (last stream's done time - resume). "
            "efficiency = core fps / baseline fps, median over repeats run interleaved. 'with delivery' "
            "adds one WebSocket subscriber per stream; its events give the saturated latency. Batching "
            "efficiency = mean executed batch (Triton: inferences / executions) / min(N, core "
            "max_batch, model max_batch_size)."
        ),
        "clip": clip_info(ctx.pipeline_clip),
        "core_max_batch": core_max_batch,
        "model_max_batch": model_max_batch,
        "runs": runs,
    }


def bare_decode(clip: Path, streams: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.baseline", str(clip), "--streams", str(streams)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return dict(json.loads(out.stdout))


async def core_run(ctx: Context, streams: int, deliver: bool) -> dict[str, Any]:
    api = ctx.api
    body = stream_body(ctx.pipeline_clip, PROBE, status="pause", name="bench-pipeline")
    ids = [await api.create(body) for _ in range(streams)]
    watchers: list[Watcher] = await subscribe(api, ids) if deliver else []
    before, cpu_before = await ctx.triton.stats(PROBE_MODEL), ctx.stack.cpu_seconds()
    stages_before = await profile.snapshot(api.http, ctx.stack.core_metrics_url)
    try:
        resumed = time.time()
        await asyncio.gather(*(api.patch(i, "pending") for i in ids))
        records = await api.wait_final(ids, timeout=600, poll=0.1)
        cpu_after = ctx.stack.cpu_seconds()
        triton = (await ctx.triton.stats(PROBE_MODEL)).since(before)
        stages = profile.stages_between(
            stages_before, await profile.snapshot(api.http, ctx.stack.core_metrics_url)
        )
        bad = [r for r in records if r["status"] != "done"]
        if bad:
            raise RuntimeError(f"pipeline stream ended {bad[0]['status']}: {bad[0]['error']}")
        if watchers:
            # The done status travels behind every event of its stream: wait for it.
            async with asyncio.timeout(60):
                await asyncio.gather(*(w.final.wait() for w in watchers))
    finally:
        for watcher in watchers:
            await watcher.close()
        for stream_id in ids:
            await api.delete(stream_id)
    # The core stamps a stream's status changes with its wall clock; same machine as ours.
    finished = max(timestamp(r["last_update_time"]) for r in records)
    frames = sum(int(r["statistics"]["frames_processed"]) for r in records)
    seconds = finished - resumed
    return {
        "streams": streams,
        "frames": frames,
        "seconds": round(seconds, 4),
        "fps": frames / seconds if seconds > 0 else 0.0,
        "cpu_seconds": {k: round(cpu_after[k] - cpu_before[k], 3) for k in cpu_after},
        "triton": triton,
        "core_stages": stages,
        "events_received": sum(w.probe_events for w in watchers),
        "events_lost": sum(w.lost for w in watchers),
        "latencies_s": [x for w in watchers for x in w.latencies],
    }


def median_stages(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each hot-path stage's median over the repeats (benchmarks/profile.py)."""
    keys = [
        k
        for k in runs[0]
        if k.endswith(("_ms_per_frame", "_ms_per_item", "_ms_per_batch", "_ms_mean", "_bound"))
    ]
    return {k: rnd(median([r[k] for r in runs if r[k] is not None])) for k in keys}


def cpu_per_frame(repeats: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """CPU milliseconds per frame of each process tree, in the runs without delivery (medians)."""
    result: dict[str, float | None] = {
        "bare_decode": rnd(
            median([1000 * r["baseline"]["cpu_seconds"] / r["baseline"]["frames"] for r in repeats])
        )
    }
    for name in ("core", "triton", "facade"):
        result[name] = rnd(
            median([1000 * r["core"]["cpu_seconds"][name] / r["core"]["frames"] for r in repeats])
        )
    return result


def latency_section(latencies: Sequence[float], compute_ms: float | None) -> dict[str, Any]:
    """Decode-to-WebSocket latency, and the same minus the model's compute time per execution."""
    compute = compute_ms or 0.0
    total = summary(latencies, 1000.0, 2)
    return {
        "total": total,
        "model_compute_ms": rnd(compute, 2),
        "added_p50": rnd(total["p50"] - compute, 2) if total["p50"] is not None else None,
        "added_p99": rnd(total["p99"] - compute, 2) if total["p99"] is not None else None,
    }


def clip_info(clip: Path) -> dict[str, Any]:
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        return {
            "path": str(clip.relative_to(REPO)) if clip.is_relative_to(REPO) else str(clip),
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(stream.average_rate or 0),
            "frames": stream.frames,
            "codec": stream.codec_context.name,
        }


async def live_latency(ctx: Context) -> dict[str, Any]:
    """Decode-to-WebSocket latency of live 720p25 RTSP streams analysed at 5 fps: a load, not a flood."""
    every = ctx.sizes.capacity_every
    runs = []
    for streams in ctx.sizes.latency_streams:
        ctx.tick(f"live latency x{streams}")
        ctx.ensure_cameras()
        body = stream_body(ctx.camera_url, PROBE, live=True, every=every, name="bench-latency")
        ids = await create_many(ctx.api, body, streams)
        watchers = await subscribe(ctx.api, ids)
        try:
            await wait_cameras_running(ctx, ids, timeout=60)
            await asyncio.sleep(1.0)  # past the start-up transient (first keyframe, first batches)
            for watcher in watchers:
                watcher.latencies.clear()
            before = await ctx.triton.stats(PROBE_MODEL)
            await asyncio.sleep(ctx.sizes.latency_window_s)
            triton = (await ctx.triton.stats(PROBE_MODEL)).since(before)
            latencies = [x for w in watchers for x in w.latencies]
        finally:
            for watcher in watchers:
                await watcher.close()
            for stream_id in ids:
                await ctx.api.delete(stream_id)
        section = latency_section(latencies, triton["compute_infer_ms_per_execution"])
        runs.append(
            {
                "streams": streams,
                **section,
                "triton": triton,
                "samples_ms": [round(x * 1000, 2) for x in latencies],
            }
        )
    return {
        "method": (
            "N live 720p25 RTSP cameras (lva_testkit/rtsp_server.py, a media per client: out of phase), "
            f"every {every}th frame (5 fps) analysed by pipeline_probe; for every event, receipt time "
            "on the WebSocket minus the frame's decoded_at_wall. Added latency = that minus the "
            "model's compute time per execution (Triton compute_infer / executions over the same "
            "window), which is reported separately."
        ),
        "runs": runs,
    }


async def wait_cameras_running(ctx: Context, ids: Sequence[str], timeout: float) -> None:
    """wait_running for camera streams, restarting the RTSP server should it die meanwhile.

    GStreamer's RTSP server sometimes aborts while a burst of clients connects (create_many);
    the streams reconnect by themselves (autorestart) once it is back.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            await wait_running(ctx.api, ids, timeout=min(10.0, max(1.0, deadline - time.monotonic())))
            return
        except TimeoutError:
            ctx.ensure_cameras()
            if time.monotonic() >= deadline:
                raise


async def wait_running(api: Api, ids: Sequence[str], timeout: float) -> None:
    """Until every stream is in progress and has analysed a frame."""
    deadline = time.monotonic() + timeout
    wanted = set(ids)
    while True:
        streams = [s for s in await api.list_streams() if s["stream_id"] in wanted]
        failed = [s for s in streams if s["status"] in ("failure", "done", "stop")]
        if failed:
            raise RuntimeError(f"stream {failed[0]['status']}: {failed[0]['error']}")
        if all(
            s["status"] == "in_progress" and int(s["statistics"]["frames_processed"]) > 0 for s in streams
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"streams did not start within {timeout:.0f} s")
        await asyncio.sleep(0.1)


# ---- time to first event ------------------------------------------------------------------------


async def time_to_first_event(ctx: Context) -> dict[str, Any]:
    sources: dict[str, tuple[str, bool]] = {"file": (str(ctx.live_clip), False)}
    if ctx.cameras is not None:
        sources["rtsp"] = (ctx.camera_url, True)
    result: dict[str, Any] = {
        "method": (
            "after_create: a stream is created running (status pending) and a WebSocket opened as "
            "soon as the call returns; the time from the create call's return to the first "
            "pipeline_probe event received. Events sent before the WebSocket subscribed are not seen "
            "(first_frame > 0 says so), as for any client. after_resume: created paused, subscribed, "
            "then started with PATCH status=pending; the time from that call's return to the first "
            "event, with nothing missed."
        )
    }
    for name, (reference, live) in sources.items():
        ctx.tick(f"time to first event ({name})")
        ctx.ensure_cameras()
        created, resumed = [], []
        for _ in range(ctx.sizes.ttfe_trials):
            created.append(await _first_event(ctx, reference, live, from_pause=False))
            resumed.append(await _first_event(ctx, reference, live, from_pause=True))
        result[name] = {
            "after_create_s": summary([t["seconds"] for t in created]),
            "after_resume_s": summary([t["seconds"] for t in resumed]),
            "trials": {"after_create": created, "after_resume": resumed},
        }
    return result


async def _first_event(ctx: Context, reference: str, live: bool, from_pause: bool) -> dict[str, Any]:
    api = ctx.api
    body = stream_body(
        reference, PROBE, live=live, status="pause" if from_pause else "pending", name="bench-ttfe"
    )
    stream_id = await api.create(body)
    started = time.time()
    watcher = api.watch(stream_id).start()
    try:
        if from_pause:
            async with asyncio.timeout(10):
                await watcher.subscribed.wait()
            await api.patch(stream_id, "pending")
            started = time.time()
        async with asyncio.timeout(60):
            await watcher.first_or_final.wait()
    finally:
        await watcher.close()
        await api.delete(stream_id)
    if watcher.first_event is None:
        raise RuntimeError(f"no event from {reference}: statuses {watcher.statuses}")
    received, frame_number = watcher.first_event
    return {"seconds": round(received - started, 4), "first_frame": frame_number}


# ---- capacity -----------------------------------------------------------------------------------


async def capacity(ctx: Context) -> dict[str, Any]:
    """The largest number of live 720p25 cameras the agent analyses at 5 fps in real time."""
    sizes = ctx.sizes
    tried: dict[int, dict[str, Any]] = {}

    async def attempt(streams: int) -> bool:
        ctx.tick(f"capacity x{streams}")
        for retry in (False, True):
            ctx.ensure_cameras()
            try:
                tried[streams] = await _capacity_step(ctx, streams)
                break
            except (RuntimeError, TimeoutError) as exc:
                await ctx.api.delete_all()
                if not retry and ctx.ensure_cameras():
                    continue  # the RTSP server died under the agent: measure this count again
                # Streams that do not all start (or keep running) in time: not real time either.
                tried[streams] = {"streams": streams, "pass": False, "error": f"{type(exc).__name__}: {exc}"}
        return bool(tried[streams]["pass"])

    analysed = sizes.live_fps / sizes.capacity_every
    best, worst = 0, None
    for streams in sizes.capacity_steps:
        if len(tried) >= sizes.capacity_max_runs:
            break
        if await attempt(streams):
            best = streams
        else:
            worst = streams
            break
    # Bisect between the last count that passed and the first that did not.
    while (
        sizes.capacity_bisect
        and worst is not None
        and worst - best > 1
        and len(tried) < sizes.capacity_max_runs
    ):
        middle = (best + worst) // 2
        if await attempt(middle):
            best = middle
        else:
            worst = middle
    return {
        "method": (
            f"N live 720p{sizes.live_fps} RTSP cameras (out of phase), each sampled every "
            f"{sizes.capacity_every}th frame ({analysed:g} fps) into people_counter on the real person "
            f"detector. Statistics polled every 0.5 s over {sizes.capacity_window_s:g} s after start-up. "
            f"N passes when the p99 of frame_age < {AGE_LIMIT_S:g} s, every stream decodes >= "
            f"{RATE_SLACK:.0%} of {sizes.live_fps} fps and analyses >= {RATE_SLACK:.0%} of {analysed:g} "
            f"fps, and none restarts. Search: {list(sizes.capacity_steps)} until one fails"
            + (", then bisection" if sizes.capacity_bisect else "")
            + f", at most {sizes.capacity_max_runs} runs. The RTSP server shares the machine."
        ),
        "age_limit_s": AGE_LIMIT_S,
        "capacity": best,
        # True when every count tried passed: the true capacity is at least this.
        "lower_bound_only": worst is None,
        "steps": [tried[n] for n in sorted(tried)],
    }


async def _capacity_step(ctx: Context, streams: int) -> dict[str, Any]:
    api, sizes = ctx.api, ctx.sizes
    await asyncio.sleep(2.0)  # the RTSP server tears down the previous step's medias
    body = stream_body(
        ctx.camera_url, [people_counter(1)], live=True, every=sizes.capacity_every, name="bench-capacity"
    )
    ids = await create_many(api, body, streams)
    samples: list[tuple[float, dict[str, dict[str, Any]]]] = []
    try:
        # Restarts the RTSP server within seconds should it abort while the cameras connect,
        # rather than letting the whole start-up timeout run out.
        await wait_cameras_running(ctx, ids, timeout=60)
        await asyncio.sleep(2.0)  # the detector's first batches and the decoders' catch-up
        stop_at = time.monotonic() + sizes.capacity_window_s
        while True:
            now = time.monotonic()
            listed = {s["stream_id"]: s for s in await api.list_streams() if s["stream_id"] in set(ids)}
            samples.append((now, listed))
            if now >= stop_at:
                break
            await asyncio.sleep(0.5)
        if ctx.cameras is not None and not ctx.cameras.alive:
            # The cameras' server died, not the agent: the caller measures this count again.
            raise RuntimeError("the RTSP server aborted during the measurement window")
    finally:
        for stream_id in ids:
            await api.delete(stream_id)
    return capacity_verdict(streams, samples, sizes.live_fps, sizes.live_fps / sizes.capacity_every)


def capacity_verdict(
    streams: int,
    samples: Sequence[tuple[float, dict[str, dict[str, Any]]]],
    source_fps: float,
    analysed_fps: float,
) -> dict[str, Any]:
    (t0, first), (t1, last) = samples[0], samples[-1]
    elapsed = max(t1 - t0, 1e-9)
    ages = [float(s["statistics"]["frame_age"]) for _, listed in samples[1:] for s in listed.values()]
    decoded, analysed, dropped, states = [], [], 0, set()
    for stream_id, end in last.items():
        start = first.get(stream_id, end)
        decoded.append(
            (int(end["statistics"]["frames_decoded"]) - int(start["statistics"]["frames_decoded"])) / elapsed
        )
        analysed.append(
            (int(end["statistics"]["frames_processed"]) - int(start["statistics"]["frames_processed"]))
            / elapsed
        )
        dropped += int(end["statistics"]["frames_dropped"]) - int(start["statistics"]["frames_dropped"])
    states = {s["status"] for _, listed in samples for s in listed.values()}
    age_p99 = percentile(ages, 99)
    ok = (
        age_p99 is not None
        and age_p99 < AGE_LIMIT_S
        and len(decoded) == streams
        and min(decoded) >= RATE_SLACK * source_fps
        and min(analysed) >= RATE_SLACK * analysed_fps
        and states == {"in_progress"}
    )
    return {
        "streams": streams,
        "pass": ok,
        "frame_age_s": summary(ages),
        "decode_fps_min": rnd(min(decoded) if decoded else None, 2),
        "decode_fps_mean": rnd(float(np.mean(decoded)) if decoded else None, 2),
        "analysed_fps_min": rnd(min(analysed) if analysed else None, 2),
        "analysed_fps_mean": rnd(float(np.mean(analysed)) if analysed else None, 2),
        "frames_dropped": dropped,
        "statuses": sorted(states),
        "window_s": round(elapsed, 2),
    }


# ---- leaks --------------------------------------------------------------------------------------


async def leak_cycles(ctx: Context) -> dict[str, Any]:
    """RSS of core and facade over create / subscribe / delete cycles of running file streams."""
    api, sizes = ctx.api, ctx.sizes
    body = stream_body(ctx.pipeline_clip, PROBE, name="bench-cycle")
    every = max(1, sizes.leak_cycles // sizes.leak_samples)
    series: list[dict[str, Any]] = [{"cycle": 0, **ctx.stack.rss_kib()}]
    started = time.perf_counter()
    for cycle in range(1, sizes.leak_cycles + 1):
        stream_id = await api.create(body)
        watcher = api.watch(stream_id).start()
        async with asyncio.timeout(10):
            await watcher.subscribed.wait()
        await api.delete(stream_id)
        async with asyncio.timeout(10):
            await watcher.final.wait()  # the bridge closes on the deleted stream's "stop"
        await watcher.close()
        if cycle % every == 0 or cycle == sizes.leak_cycles:
            series.append({"cycle": cycle, **ctx.stack.rss_kib()})
    elapsed = time.perf_counter() - started
    return {
        "method": (
            "Each cycle: create a running file stream (pipeline_probe), open its WebSocket, delete it "
            "while it runs, wait for the WebSocket to close. VmRSS of each service's process tree "
            "(/proc/<pid>/status) every few cycles. growth = last - first sample after the first "
            "tenth of the cycles (allocators and caches warm up); slope: Theil-Sen (the median of the "
            "slopes between every two samples) over those, robust to the allocator handing memory back."
        ),
        "cycles": sizes.leak_cycles,
        "seconds": round(elapsed, 2),
        "series_kib": series,
        "growth": rss_growth(series, "cycle", per=1000),
    }


async def soak(ctx: Context) -> dict[str, Any]:
    """RSS over a long run of live cameras with people_counter and WebSocket subscribers."""
    api, sizes = ctx.api, ctx.sizes
    counter = people_counter(1)
    # An event every second of stream time per stream, so that the bus and the bridge carry traffic.
    counter["parameters"].update(
        {"people_count_threshold": 0, "event_policy": {"trigger": "period", "interval": 1}}
    )
    body = stream_body(ctx.camera_url, [counter], live=True, every=sizes.capacity_every, name="bench-soak")
    ctx.ensure_cameras()
    ids = await create_many(api, body, sizes.soak_streams)
    watchers = await subscribe(api, ids)
    series: list[dict[str, Any]] = []
    try:
        await wait_cameras_running(ctx, ids, timeout=60)
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            series.append({"seconds": round(elapsed, 1), **ctx.stack.rss_kib()})
            ctx.ensure_cameras()  # the streams reconnect by themselves (autorestart)
            if elapsed >= sizes.soak_s:
                break
            await asyncio.sleep(min(sizes.soak_sample_s, max(0.0, sizes.soak_s - elapsed)))
        records = [await api.get(i) for i in ids]
    finally:
        for watcher in watchers:
            await watcher.close()
        for stream_id in ids:
            await api.delete(stream_id)
    return {
        "method": (
            f"{sizes.soak_streams} live 720p25 RTSP cameras, every {sizes.capacity_every}th frame into "
            "people_counter (one event per second per stream), one WebSocket subscriber each, for "
            f"{sizes.soak_s:g} s; VmRSS of each service's process tree every {sizes.soak_sample_s:g} s. "
            "growth: as for the cycles, per minute."
        ),
        "streams": sizes.soak_streams,
        "seconds": sizes.soak_s,
        "series_kib": series,
        "growth": rss_growth(series, "seconds", per=60),
        "events_received": sum(w.other_events for w in watchers),
        "frames_processed": sum(int(r["statistics"]["frames_processed"]) for r in records),
        "frames_dropped": sum(int(r["statistics"]["frames_dropped"]) for r in records),
        "statuses": sorted({r["status"] for r in records}),
    }


def rss_growth(series: Sequence[dict[str, Any]], axis: str, per: float) -> dict[str, Any]:
    """Per service: RSS growth (MiB) after warm-up, and its robust slope in MiB per ``per`` of ``axis``."""
    warm = [p for p in series if p[axis] >= 0.1 * series[-1][axis]] or list(series)
    result: dict[str, Any] = {}
    for name in ("core", "facade", "triton"):
        xs = [float(p[axis]) for p in warm]
        ys = [p[name] / 1024 for p in warm]
        fit = slope(xs, ys)
        result[name] = {
            "start_mib": rnd(series[0][name] / 1024, 1),
            "end_mib": rnd(series[-1][name] / 1024, 1),
            "growth_mib": rnd(ys[-1] - ys[0], 2),
            f"slope_mib_per_{per:g}": rnd(fit * per if fit is not None else None, 2),
        }
    return result
