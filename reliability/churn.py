"""Churn: streams created and deleted over and over, paused and resumed, subscribers coming and going.

Each cycle creates a stream, maybe subscribes to it (a WebSocket that closes cleanly, and/or
one whose TCP connection is reset without a goodbye), maybe pauses and resumes it, and deletes
it. Several lanes run cycles at once, so creations, deletions and subscriptions interleave.
The mix is a pure function of the cycle's number: a run is reproducible.

After a warm-up (lazily created pools fill, allocators reach their working size) the census is
taken; at the end the census must be back within its slack (reliability/census.py) and the
resident memory may have grown by at most a bound. RSS is sampled along the way, so that the
figures show a slope, not just two points (benchmarks.measures.rss_growth).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import Any

from benchmarks.api import PROBE, Api, stream_body
from benchmarks.measures import rss_growth
from reliability.bench import Bench, clip, raw_ws_client

# Bounds on resident memory growth from the end of the warm-up to the end (MiB). The core
# decodes and converts frames of many short-lived streams: allocator arenas hold some.
RSS_BOUND_MIB = {"core": 60.0, "facade": 20.0}


def _abort(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0): a client that vanishes without a close frame."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _pause(api: Api, stream_id: str) -> bool:
    """Pause the stream; False when its file ended first (done cannot be paused: 409, a race
    of a short file on a busy machine, not a fault). Any other refusal is raised."""
    try:
        await api.patch(stream_id, "pause")
    except RuntimeError as exc:
        if " 409 " in str(exc) and (await api.get(stream_id))["status"] == "done":
            return False
        raise
    return True


async def churn(bench: Bench, cycles: int, lanes: int = 4, samples: int = 20) -> dict[str, Any]:
    api = bench.api
    short = await asyncio.to_thread(clip, bench.clips, "churn.mp4", 2.0)
    counts = {
        "created": 0,
        "deleted": 0,
        "paused": 0,
        "resumed": 0,
        "subscribers": 0,
        "abrupt": 0,
        "live": 0,
        "events_seen": 0,
    }
    errors: list[str] = []

    async def cycle(number: int) -> None:
        live = number % 10 == 0
        created_paused = number % 3 == 0
        if live:
            body = bench.live_body(bench.witness_camera.url, "churn-live")
            counts["live"] += 1
        else:
            status = "pause" if created_paused else "pending"
            body = stream_body(short, PROBE, every=5, status=status, name="churn")
        stream_id = await api.create(body)
        counts["created"] += 1
        watcher = api.watch(stream_id).start() if number % 2 == 0 else None
        abrupt = await raw_ws_client(api.ws_url, stream_id) if number % 4 == 1 else None
        try:
            if watcher is not None:
                counts["subscribers"] += 1
                async with asyncio.timeout(10):
                    await watcher.subscribed.wait()
                if not created_paused:
                    # Let it work: decoding, inference, the bus and the WebSocket all carry this stream.
                    async with asyncio.timeout(20):
                        await watcher.first_or_final.wait()
                    counts["events_seen"] += int(watcher.probe_events > 0)
            if number % 3 != 2 and await _pause(api, stream_id):
                counts["paused"] += 1
                await api.patch(stream_id, "pending")
                counts["resumed"] += 1
            if abrupt is not None:
                counts["abrupt"] += 1
                _abort(abrupt)
                abrupt = None
        finally:
            if abrupt is not None:
                abrupt.close()
            await api.delete(stream_id)
            counts["deleted"] += 1
            if watcher is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await watcher.final.wait()  # the bridge closes after the deleted stream's stop
                if not watcher.final.is_set():
                    errors.append(f"cycle {number}: the WebSocket stayed open after the delete")
                await watcher.close()

    async def lane(first: int, last: int, step: int) -> None:
        for number in range(first, last, step):
            try:
                await cycle(number)
            except Exception as exc:  # a figure; the run goes on so that leaks still show
                errors.append(f"cycle {number}: {type(exc).__name__}: {exc}")

    async def run(first: int, last: int) -> None:
        await asyncio.gather(*(lane(first + k, last, lanes) for k in range(lanes)))

    warmup = max(lanes * 2, cycles // 10)
    started = time.perf_counter()
    await run(0, warmup)
    baseline = await asyncio.to_thread(bench.census)
    series: list[dict[str, Any]] = [{"cycle": warmup, **bench.stack.rss_kib()}]
    every = max(lanes, (cycles - warmup) // samples)
    for first in range(warmup, cycles, every):
        await run(first, min(cycles, first + every))
        series.append({"cycle": min(cycles, first + every), **bench.stack.rss_kib()})
    elapsed = time.perf_counter() - started
    settled = await bench.settle(baseline)
    left = [s["stream_id"] for s in await api.list_streams() if s["stream_id"] not in bench.witnesses]

    growth = rss_growth(series, "cycle", per=1000)
    violations = list(errors[:20])
    for service, result in settled.items():
        if result["excess"]:
            violations.append(f"{service} leaked {result['excess']} (census {result['census']})")
    for service, bound in RSS_BOUND_MIB.items():
        grown = (series[-1][service] - series[0][service]) / 1024
        if grown > bound:
            violations.append(
                f"{service} RSS grew {grown:.1f} MiB over {cycles - warmup} cycles (bound {bound})"
            )
    if left:
        violations.append(f"{len(left)} streams left after deleting them all")
    return {
        "method": (
            f"{cycles} cycles in {lanes} concurrent lanes, each: create a stream (every 10th a live RTSP "
            "camera, otherwise a 2 s file; every 3rd created paused), a WebSocket on every 2nd (waiting "
            "for its first event when the stream runs), a WebSocket reset without a close frame on every "
            "4th, pause + resume on 2 of 3, delete. Census and RSS baseline after "
            f"{warmup} warm-up cycles."
        ),
        "cycles": cycles,
        "seconds": round(elapsed, 2),
        "counts": counts,
        "errors": len(errors),
        "census_baseline": baseline,
        "census_after": {s: r["census"] for s, r in settled.items()},
        "census_delta": {s: r["delta"] for s, r in settled.items()},
        "rss_series_kib": series,
        "rss_growth": growth,
        "rss_bound_mib": RSS_BOUND_MIB,
        "streams_left": len(left),
        "violations": violations,
    }
