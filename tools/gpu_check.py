"""NVDEC against software decoding, and the stack's streams per GPU: ``tools/gpu_check.sh``.

    tools/gpu_check.sh [--quick] [--out FILE] [--clip CLIP] [--no-stack]

Writes one JSON file (default ``benchmarks/results/gpu-<YYYY-MM-DD>T<HHMMSS>.json``):

- ``cuda``: whether this machine can decode with NVDEC, asked exactly as the core asks it
  (``lva_core.pipeline.source.hwaccel.device_problem``), and why not where it cannot.
- ``decode``: frames/s and CPU per frame of 1, 4 and 16 streams of the clip decoded in parallel
  in software and with NVDEC, each run in a process of its own (one thread per stream, as the
  core decodes; CPU from ``getrusage``, so the CUDA driver's threads count too). Two variants:
  ``decode`` is bare PyAV (what NVDEC replaces; hardware frames downloaded to memory, as the
  core gets them) and ``decode_rgb`` adds one rgb24 conversion per frame with the core's
  settings (one reformatter per stream, one thread), as ``benchmarks/baseline.py`` does.
  Streams open as the core's ``VideoSource`` opens them: ``file:`` and its ``accelerator()``.
- ``stack``: the benchmarks' capacity step (``benchmarks.measures.capacity``: live RTSP
  cameras, people_counter on the real person detector, frame age p99 < 1 s) against a core
  with ``decoder.hwaccel: none`` and one with ``cuda``, on one Triton. Skipped, with the
  reason, where there is no CUDA device, no RTSP server, or with ``--no-stack``.

It never fails on a figure. It exits 1 only when a measurement could not be taken (the
results, written all the same, say which under ``errors``), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCHEMA = 1
STREAMS = (1, 4, 16)
VARIANTS = ("decode", "decode_rgb")
MODES = {"software": "none", "nvdec": "cuda"}  # section -> decoder.hwaccel
WORKER_TIMEOUT_S = 300
NVDEC_LOGGED = "decoding with NVDEC (cuda)"  # what the core logs once per stream (hwaccel.py)


def say(text: str) -> None:
    print(f"gpu-check: {text}", file=sys.stderr, flush=True)


# ---- one decoding run, in a process of its own --------------------------------------------------


def worker(clip: str, streams: int, variant: str, hwaccel: str) -> dict[str, Any]:
    """``streams`` threads decoding ``clip``, released together once every stream is open."""
    import av
    from av.video.reformatter import VideoReformatter

    from lva_core.pipeline.source.hwaccel import accelerator

    counts, hardware, formats = [0] * streams, [False] * streams, [""] * streams
    errors: list[str | None] = [None] * streams
    open_s = [0.0] * streams
    start = threading.Barrier(streams + 1)

    def run(i: int) -> None:
        container: Any = None
        try:
            opened = time.perf_counter()
            # As VideoSource.open() opens a file: FFmpeg's file protocol, the core's accelerator.
            container = av.open(f"file:{clip}", hwaccel=accelerator(hwaccel, f"gpu-check:{i}"))
            stream = container.streams.video[0]
            hardware[i] = bool(stream.codec_context.is_hwaccel)
            open_s[i] = time.perf_counter() - opened
        except Exception as exc:
            errors[i] = f"{type(exc).__name__}: {exc}"
        finally:
            start.wait()
        if errors[i] is not None:
            return
        rgb = VideoReformatter() if variant == "decode_rgb" else None
        try:
            for packet in container.demux(stream):
                for frame in stream.codec_context.decode(packet):
                    formats[i] = formats[i] or frame.format.name
                    if rgb is not None:
                        rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()
                    counts[i] += 1
        except Exception as exc:
            errors[i] = f"{type(exc).__name__}: {exc}"
        finally:
            container.close()

    threads = [threading.Thread(target=run, args=(i,), name=f"decode:{i}") for i in range(streams)]
    for thread in threads:
        thread.start()
    start.wait()  # every stream is open (or failed to): opening is not timed
    usage, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    frames = sum(counts)
    return {
        "variant": variant,
        "hwaccel": hwaccel,
        "streams": streams,
        "frames": frames,
        "seconds": round(seconds, 4),
        "fps": round(frames / seconds, 1) if seconds > 0 and frames else None,
        "fps_per_stream": round(frames / seconds / streams, 1) if seconds > 0 and frames else None,
        "cpu_seconds": round(cpu, 4),
        "cpu_ms_per_frame": round(cpu * 1000 / frames, 3) if frames else None,
        "open_s_max": round(max(open_s), 3),
        # Streams whose decoder opened on the CUDA device (is_hwaccel). The frames say what
        # decoded them: nv12 downloaded from NVDEC, yuv420p where FFmpeg fell back to software.
        "hw_decoded_streams": sum(hardware),
        "frame_formats": sorted({f for f in formats if f}),
        "per_stream_frames": counts,
        "errors": [e for e in errors if e],
    }


def decode_run(clip: Path, streams: int, variant: str, hwaccel: str) -> dict[str, Any]:
    args = ["--worker", variant, "--hwaccel", hwaccel, "--streams", str(streams), str(clip)]
    out = subprocess.run(
        [sys.executable, "-m", "tools.gpu_check", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    if out.returncode != 0:
        raise RuntimeError(f"decoding worker exited with {out.returncode}: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ---- the GPU as nvidia-smi sees it --------------------------------------------------------------


def nvidia_smi() -> dict[str, Any]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"available": False, "reason": "nvidia-smi is not on PATH"}
    fields = ("index", "name", "driver_version", "memory.total", "pci.bus_id")
    try:
        query = subprocess.run(
            [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        header = subprocess.run([exe], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    if query.returncode != 0:
        return {"available": False, "reason": (query.stderr or query.stdout).strip()[-500:]}
    gpus = [
        dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
        for line in query.stdout.splitlines()
    ]
    cuda = next(
        (
            line.split("CUDA Version:")[1].split()[0]
            for line in header.splitlines()
            if "CUDA Version:" in line
        ),
        None,
    )
    return {"available": True, "gpus": gpus, "cuda_version": cuda}


class GpuSampler:
    """nvidia-smi's utilisation every 200 ms while a run lasts; ``summary()`` None without it."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.reader: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        exe = shutil.which("nvidia-smi")
        if exe is not None:
            query = "--query-gpu=utilization.gpu,utilization.decoder,memory.used"
            self.proc = subprocess.Popen(
                [exe, query, "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            stdout = self.proc.stdout
            assert stdout is not None
            self.reader = threading.Thread(target=lambda: self.lines.extend(stdout), daemon=True)
            self.reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        if self.reader is not None:
            self.reader.join(5)

    def summary(self) -> dict[str, Any] | None:
        if self.proc is None:
            return None
        rows = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                rows.append([float(v) for v in line.split(",")])
        if not rows:
            return {"samples": 0}
        return {
            "samples": len(rows),
            "gpu_util_max": max(r[0] for r in rows),
            "decoder_util_max": max(r[1] for r in rows),
            "decoder_util_mean": round(sum(r[1] for r in rows) / len(rows), 1),
            "memory_used_max_mib": max(r[2] for r in rows),
        }


# ---- the sections -------------------------------------------------------------------------------


def clip_info(clip: Path) -> dict[str, Any]:
    import av

    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        rate, tb = stream.average_rate or stream.guessed_rate, stream.time_base
        return {
            "path": str(clip),
            "codec": stream.codec_context.name,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(rate) if rate else None,
            "frames": stream.frames or None,
            "seconds": round(float(stream.duration * tb), 3) if stream.duration and tb else None,
            "bit_rate": container.bit_rate or None,
        }


def decode_section(clip: Path, problem: str | None, errors: dict[str, str]) -> dict[str, Any]:
    section: dict[str, Any] = {
        "method": (
            "For N streams: one process, N threads, each decoding the whole clip; opened first, then "
            "released together, so the figures leave opening (and the CUDA context) out. fps = frames "
            "/ seconds; cpu_ms_per_frame = the process's user + system CPU (getrusage) per frame. "
            "variant decode: bare PyAV (NVDEC frames downloaded to system memory, as the core gets "
            "them); decode_rgb: plus one rgb24 conversion per frame, one reformatter per stream with "
            "one thread (the core's settings, as benchmarks/baseline.py). Streams open as the core "
            "opens a file, with its accelerator() (decoder.hwaccel none / cuda). Software and NVDEC "
            "runs interleaved, so drift of the machine hits both."
        ),
        "streams": list(STREAMS),
        "software": {v: [] for v in VARIANTS},
        "nvdec": {v: [] for v in VARIANTS} if problem is None else {"skipped": f"no CUDA device: {problem}"},
    }
    for variant in VARIANTS:
        for streams in STREAMS:
            for name, hwaccel in MODES.items():
                if name == "nvdec" and problem is not None:
                    continue
                key = f"decode.{name}.{variant}.x{streams}"
                say(f"{name} {variant} x{streams}")
                with GpuSampler() as gpu:
                    try:
                        run = decode_run(clip, streams, variant, hwaccel)
                    except Exception as exc:
                        errors[key] = "".join(traceback.format_exception(exc))[-4000:]
                        continue
                if name == "nvdec":
                    run["gpu"] = gpu.summary()
                if run["errors"]:
                    errors[key] = "; ".join(run["errors"])[:4000]
                section[name][variant].append(run)
    if problem is None:
        section["nvdec_vs_software"] = {
            variant: {
                str(s["streams"]): {
                    "fps": ratio(n["fps"], s["fps"]),
                    "cpu_ms_per_frame": ratio(n["cpu_ms_per_frame"], s["cpu_ms_per_frame"]),
                }
                for s in section["software"][variant]
                for n in section["nvdec"][variant]
                if n["streams"] == s["streams"]
            }
            for variant in VARIANTS
        }
    return section


def ticker(name: str) -> Callable[[str], None]:
    """The capacity search's progress callback: says what runs next."""
    return lambda label: say(f"{name}: {label}")


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


async def stack_section(clip: Path, quick: bool, errors: dict[str, str]) -> dict[str, Any]:
    """The capacity step against a software core and an NVDEC core, one Triton for both."""
    import aiohttp

    from benchmarks import measures
    from benchmarks.api import Api, people_counter, stream_body
    from benchmarks.stack import CACHE, TritonProbe
    from lva_testkit.rtsp_server import RtspServer
    from lva_testkit.stack import Service, Stack, start_core, start_facade, start_triton

    fps = round(clip_info(clip)["fps"] or 25)
    sizes = replace(
        measures.Sizes(),
        live_fps=fps,
        capacity_every=max(1, fps // 5),  # analysed at 5 fps, as the benchmarks do
        capacity_steps=(8, 32) if quick else (8, 16, 32, 64, 128, 256),
        capacity_max_runs=2 if quick else 6,
        capacity_bisect=not quick,
        capacity_window_s=4.0 if quick else 10.0,
    )
    log_dir = CACHE / "gpu-logs" / datetime.now().strftime("%Y-%m-%dT%H%M%S")
    for old in sorted(p for p in log_dir.parent.glob("*") if p.is_dir())[:-4]:
        shutil.rmtree(old, ignore_errors=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    section: dict[str, Any] = {
        "method": (
            "benchmarks.measures.capacity (see its method below) against a core with "
            "decoder.hwaccel: none, then one with cuda, each with its facade, on one Triton (the "
            "person detector on the GPU where Triton finds one). Before each search one camera runs "
            "until it has analysed a frame, to warm the models. nvdec_streams_logged: streams whose "
            "core logged that they decode with NVDEC. streams_per_gpu: the cuda core's capacity "
            "(the core decodes on CUDA's default device)."
        ),
        "logs": str(log_dir),
        "sizes": {k: v for k, v in asdict(sizes).items() if k.startswith(("capacity", "live_fps"))},
    }
    say("starting Triton and the RTSP cameras")
    triton = await asyncio.to_thread(start_triton, log_dir)
    cameras: RtspServer | None = None
    try:
        server = RtspServer(clip, log_dir / "rtsp.log", "/camera", shared=False)
        cameras = await asyncio.to_thread(server.start)
        for name, hwaccel in MODES.items():
            services: list[Service] = []
            try:
                say(f"starting a core with decoder.hwaccel: {hwaccel}")
                env = {"LVA_DECODER__HWACCEL": hwaccel, "LVA_STREAMS__CREATE_RATE__PER_SECOND": "0"}
                core = await asyncio.to_thread(start_core, log_dir, triton.address, env)
                services.append(core)
                facade = await asyncio.to_thread(start_facade, log_dir, core.address)
                services.append(facade)
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
                    api = Api(http, f"http://{facade.address}", f"ws://{facade.address}/1/ws")
                    probe = TritonProbe(triton.address)
                    try:
                        ctx = measures.Context(
                            Stack(triton, core, facade, log_dir),
                            api,
                            probe,
                            sizes,
                            clip,
                            clip,
                            cameras,
                            ticker(name),
                        )
                        warm = stream_body(cameras.url, [people_counter(1)], live=True, name="gpu-check-warm")
                        ids = await measures.create_many(api, warm, 1)
                        try:
                            await measures.wait_cameras_running(ctx, ids, timeout=120)
                        finally:
                            await api.delete_all()
                        with GpuSampler() as gpu:
                            capacity = await measures.capacity(ctx)
                    finally:
                        await probe.close()
                section[name] = {
                    "hwaccel": hwaccel,
                    "capacity": capacity,
                    "nvdec_streams_logged": core.log_text().count(NVDEC_LOGGED),
                    "gpu": gpu.summary(),
                }
            except Exception as exc:
                errors[f"stack.{name}"] = "".join(traceback.format_exception(exc))[-4000:]
                section[name] = {"hwaccel": hwaccel, "error": f"{type(exc).__name__}: {exc}"}
            finally:
                for service in reversed(services):
                    service.stop()
    finally:
        if cameras is not None:
            cameras.stop()
        triton.stop()
    soft = (section.get("software") or {}).get("capacity") or {}
    hard = (section.get("nvdec") or {}).get("capacity") or {}
    section["streams_per_gpu"] = hard.get("capacity")
    section["nvdec_vs_software"] = ratio(hard.get("capacity"), soft.get("capacity"))
    return section


# ---- the whole check ----------------------------------------------------------------------------


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 else None
    return None


def machine_info() -> dict[str, Any]:
    import av

    model = None
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "av": av.__version__,
        "ffmpeg": {name: ".".join(map(str, v)) for name, v in av.library_versions.items()},
        "git_commit": _git_commit(),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
    }


def cuda_info() -> dict[str, Any]:
    import av
    from av.codec.hwaccel import hwdevices_available

    from lva_core.pipeline.source.hwaccel import device_problem

    problem = device_problem()
    return {
        "available": problem is None,
        "reason": problem,
        "probe": (
            "lva_core.pipeline.source.hwaccel.device_problem(): a CUDA device context for the H.264 "
            "decoder, as a core with decoder.hwaccel: auto learns it"
        ),
        "hwdevices_available": sorted(hwdevices_available()),
        "cuvid_decoders": sorted(c for c in av.codecs_available if c.endswith("_cuvid")),
    }


def check(clip: Path, quick: bool, stack: bool) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "mode": "quick" if quick else "full",
        "command": "tools/gpu_check.sh" + (" --quick" if quick else "") + ("" if stack else " --no-stack"),
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "nvidia_smi": nvidia_smi(),
        "cuda": cuda_info(),
        "clip": clip_info(clip),
        "errors": {},
    }
    errors: dict[str, str] = results["errors"]
    problem = results["cuda"]["reason"]
    results["decode"] = decode_section(clip, problem, errors)
    from lva_testkit.rtsp_server import available as rtsp_available

    if problem is not None:
        results["stack"] = {"skipped": f"no CUDA device: {problem}"}
    elif not stack:
        results["stack"] = {"skipped": "not asked for (--no-stack)"}
    elif not rtsp_available():
        results["stack"] = {"skipped": "GStreamer's RTSP server is not installed"}
    else:
        try:
            results["stack"] = asyncio.run(stack_section(clip, quick, errors))
        except Exception as exc:
            errors["stack"] = "".join(traceback.format_exception(exc))[-4000:]
            results["stack"] = {"error": f"{type(exc).__name__}: {exc}"}
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["summary"] = summarize(results)
    return results


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    decode, stack = results["decode"], results["stack"]

    def per_streams(name: str, variant: str, key: str) -> dict[str, Any] | None:
        runs = decode[name].get(variant)
        return None if runs is None else {str(r["streams"]): r[key] for r in runs}

    def capacity(name: str) -> int | None:
        value = ((stack.get(name) or {}).get("capacity") or {}).get("capacity")
        return int(value) if value is not None else None

    return {
        "cuda_available": results["cuda"]["available"],
        **{
            f"{variant}_{key}": {name: per_streams(name, variant, key) for name in MODES}
            for variant in VARIANTS
            for key in ("fps", "cpu_ms_per_frame")
        },
        "capacity": {name: capacity(name) for name in MODES},
        "streams_per_gpu": stack.get("streams_per_gpu"),
    }


def write(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # a reader never sees half a file
    tmp.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/gpu-<time>.json)")
    parser.add_argument("--quick", action="store_true", help="a short capacity search (under 2 minutes)")
    parser.add_argument(
        "--clip", type=Path, help="H.264 clip (default: the benchmarks' cached 720p25 10 s clip)"
    )
    parser.add_argument("--no-stack", action="store_true", help="decoding only: no Triton, core or cameras")
    # One decoding run, in its own process (what decode_run starts).
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--hwaccel", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("worker_clip", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker_clip, args.streams, args.worker, args.hwaccel)))
        return 0
    if args.worker_clip:
        parser.error(f"unexpected argument {args.worker_clip!r} (the clip is --clip)")
    stamp = datetime.now().strftime("%Y-%m-%dT%H%M%S")
    out = (args.out or REPO / "benchmarks" / "results" / f"gpu-{stamp}.json").resolve()
    if args.clip is not None:
        if not args.clip.is_file():
            parser.error(f"no clip at {args.clip}")
        clip = args.clip.resolve()
    else:
        from benchmarks.stack import cached_clip

        say("building the clip (once; kept in benchmarks/.cache)")
        clip = cached_clip(10.0).resolve()
    results = check(clip, args.quick, not args.no_stack)
    write(results, out)
    print(out)
    for name, error in results["errors"].items():
        print(f"FAILED {name}:\n{error}", file=sys.stderr)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
