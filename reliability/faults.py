"""The faults, each injected into the real stack while witness streams run beside it.

Every fault function injects its fault ``repeats`` times and returns its figures: faults
injected, streams recovered (or failed cleanly, with a classified error, where that is the
contract), detection and recovery times, and ``violations``: each broken guarantee, in words.
:func:`run_fault` wraps one fault with what every fault must leave intact: the witnesses'
event rate (before, during and after) and the census of the core and the facade, which must
come back to its baseline (reliability/census.py).

Why one file of over 400 lines: one small function per fault, all sharing the helpers at the
top; a file per fault would only scatter them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.api import PROBE, stream_body
from benchmarks.stats import summary
from lva_common.config import DEFAULTS
from reliability import census
from reliability.bench import HEARTBEAT_S, READ_TIMEOUT_S, Bench, clip, raw_ws_client, wait_for

# A witness keeps at least this share of its baseline event rate, during a fault that touches
# nothing it uses and after every fault. Generous: two cores shared with other work.
MIN_RATE_RATIO = 0.5
LUNA_KEYS = {"error_code", "desc", "detail", "link"}


@dataclass(frozen=True)
class Sizes:
    """How many times each fault is injected: CI (a few minutes) or the long form."""

    witnesses: int = 3
    window_s: float = 6.0
    rtsp_kill: int = 10
    rtsp_freeze: int = 10
    triton_kill: int = 3
    core_restart: int = 3
    ws_stall: int = 3
    corrupt_file: int = 5
    decoder_raise: int = 5
    churn_cycles: int = 1000
    churn_lanes: int = 4

    @classmethod
    def ci(cls) -> Sizes:
        return cls(
            witnesses=2,
            window_s=3.0,
            rtsp_kill=3,
            rtsp_freeze=2,
            triton_kill=2,
            core_restart=2,
            ws_stall=2,
            corrupt_file=2,
            decoder_raise=3,
            churn_cycles=150,
        )


Fault = Callable[[Bench, int], Awaitable[dict[str, Any]]]


def _figures(injected: int) -> dict[str, Any]:
    return {"injected": injected, "recovered": 0, "detect_s": [], "recovery_s": [], "violations": []}


async def _stream(bench: Bench, stream_id: str) -> dict[str, Any]:
    return await bench.api.get(stream_id)


async def _processing(bench: Bench, stream_id: str, above: int) -> bool:
    record = await _stream(bench, stream_id)
    return bool(record["status"] == "in_progress" and int(record["statistics"]["frames_processed"]) > above)


async def _status_is(bench: Bench, stream_id: str, wanted: str) -> bool:
    return bool((await _stream(bench, stream_id))["status"] == wanted)


# ---- the RTSP camera killed, or frozen -----------------------------------------------------------


async def _camera_fault(bench: Bench, repeats: int, freeze: bool) -> dict[str, Any]:
    figures = _figures(repeats)
    camera = bench.fault_camera
    stream_id = await bench.api.create(bench.live_body(camera.url, "faulted"))
    try:
        await wait_for(_processing, 60, "the faulted stream's first frames", args=(bench, stream_id, 0))
        for attempt in range(repeats):
            injected = time.monotonic()
            camera.freeze() if freeze else camera.stop()
            try:
                # A killed camera closes the connection at once; a frozen one is found by the read timeout.
                detect = await wait_for(
                    _status_is, READ_TIMEOUT_S + 20, "restart status", args=(bench, stream_id, "restart")
                )
                figures["detect_s"].append(detect)
            except TimeoutError as exc:
                figures["violations"].append(f"#{attempt + 1}: {exc}")
            processed = int((await _stream(bench, stream_id))["statistics"]["frames_processed"])
            await asyncio.to_thread(camera.thaw if freeze else camera.start)
            try:
                figures["recovery_s"].append(
                    await wait_for(_processing, 60, "processing again", args=(bench, stream_id, processed))
                )
                figures["recovered"] += 1
            except TimeoutError as exc:
                figures["violations"].append(f"#{attempt + 1} not recovered: {exc}")
            figures.setdefault("outage_s", []).append(round(time.monotonic() - injected, 2))
        record = await _stream(bench, stream_id)
        figures["reconnects"] = int(record["statistics"]["reconnects"])
    finally:
        await bench.api.delete(stream_id)
    return figures


async def rtsp_kill(bench: Bench, repeats: int) -> dict[str, Any]:
    """SIGKILL the camera's server (a camera losing power), then start it again at its address."""
    return await _camera_fault(bench, repeats, freeze=False)


async def rtsp_freeze(bench: Bench, repeats: int) -> dict[str, Any]:
    """SIGSTOP the camera's server (sockets open, nothing sent), then SIGCONT."""
    return await _camera_fault(bench, repeats, freeze=True)


# ---- Triton killed and restarted -------------------------------------------------------------


def _inference_errors(bench: Bench) -> float:
    return census.scrape(bench.stack.core.metrics_port).total("lva_inference_errors_total")


async def _errors_above(bench: Bench, before: float) -> bool:
    return await asyncio.to_thread(_inference_errors, bench) > before


async def _resumed(bench: Bench, since: float) -> bool:
    return all(w.arrivals and w.arrivals[-1] > since for w in bench.witnesses.values())


async def triton_kill(bench: Bench, repeats: int) -> dict[str, Any]:
    """SIGKILL Triton's tree; the streams report inference errors, then resume once it is back."""
    figures = _figures(repeats)
    figures["shared"] = True  # every witness needs Triton: no rate is owed during the outage
    for attempt in range(repeats):
        errors_before = await asyncio.to_thread(_inference_errors, bench)
        killed = time.monotonic()
        port, leftovers = await asyncio.to_thread(bench.kill_triton)
        figures["triton_shm_left"] = figures.get("triton_shm_left", 0) + len(leftovers)
        for path in leftovers:  # Triton's own; the figure says they were left, the machine keeps clean
            path.unlink(missing_ok=True)

        try:
            figures["detect_s"].append(
                await wait_for(_errors_above, 30, "inference errors reported", args=(bench, errors_before))
            )
        except TimeoutError as exc:
            figures["violations"].append(f"#{attempt + 1}: {exc}")
        statuses = {(await _stream(bench, i))["status"] for i in bench.witnesses}
        if not statuses <= {"in_progress", "restart"}:
            figures["violations"].append(f"#{attempt + 1}: witnesses went {sorted(statuses)} without Triton")
        await asyncio.to_thread(bench.restart_triton, port)
        back = time.monotonic()
        try:
            figures["recovery_s"].append(
                await wait_for(_resumed, 60, "witness events after Triton's return", args=(bench, back))
            )
            figures["recovered"] += 1
            figures.setdefault("outage_s", []).append(round(time.monotonic() - killed, 2))
        except TimeoutError as exc:
            figures["violations"].append(f"#{attempt + 1} not recovered: {exc}")
    figures["streams_resumed"] = len(bench.witnesses) * figures["recovered"]
    return figures


# ---- the core restarted under the facade ------------------------------------------------------

WS_RESUME_S = float(DEFAULTS["facade"]["ws_resume_timeout"])


async def _triton_registrations(bench: Bench) -> list[str]:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(bench.stack.triton.address)
    try:
        status = await client.get_system_shared_memory_status(as_json=True)
    finally:
        await client.close()
    return sorted(status.get("regions", {}))


async def core_restart(bench: Bench, repeats: int) -> dict[str, Any]:
    """SIGKILL the core: the facade answers 503 with a LUNA body, keeps the WebSockets it bridged
    open while it tries to watch again (``facade.ws_resume_timeout``: a fleet's other cores would
    answer), then closes them with an error, and serves again once a new core listens at the
    same address."""
    figures = _figures(repeats)
    figures["shared"] = True
    figures["answers_while_down"] = []
    witnesses = len(bench.witnesses)
    for attempt in range(repeats):
        killed = time.monotonic()
        old_pid = await asyncio.to_thread(bench.kill_core)
        async with bench.http.get(f"{bench.api.base_url}/1/streams") as resp:
            body = await resp.json(content_type=None)
            figures["answers_while_down"].append(resp.status)
            if resp.status != 503 or set(body) != LUNA_KEYS or body.get("error_code") != 47006:
                figures["violations"].append(f"#{attempt + 1}: core down answered {resp.status} {body}")
        try:
            # The bridged WebSockets end (with an error message) rather than hang, once the
            # facade has tried to watch again for its resume timeout (15 s by default).
            async def closed() -> bool:
                return all(w.task is not None and w.task.done() for w in bench.witnesses.values())

            figures["detect_s"].append(await wait_for(closed, WS_RESUME_S + 15, "witness WebSockets closed"))
        except TimeoutError as exc:
            figures["violations"].append(f"#{attempt + 1}: {exc}")
        await bench.stop_witnesses()  # their WebSockets are closed
        await asyncio.to_thread(bench.restart_core)

        async def serving() -> bool:
            async with bench.http.get(f"{bench.api.base_url}/1/streams") as resp:
                return resp.status == 200

        try:
            figures["recovery_s"].append(await wait_for(serving, 30, "the facade serving again"))
            figures["recovered"] += 1
        except TimeoutError as exc:
            figures["violations"].append(f"#{attempt + 1} not reconnected: {exc}")
            continue
        figures.setdefault("outage_s", []).append(round(time.monotonic() - killed, 2))
        orphans = [n for n in census.orphan_shm_regions() if n.startswith(f"{census.SHM_PREFIX}{old_pid}_")]
        if orphans:
            figures["violations"].append(f"#{attempt + 1}: the dead core's shm regions remain: {orphans}")
        # A core that persists its streams brings the witnesses back; counted, then replaced by
        # fresh ones, so that the figures after the fault do not depend on persistence.
        restored = await bench.api.list_streams()
        figures.setdefault("streams_restored", []).append(len(restored))
        for stream in restored:
            await bench.api.delete(stream["stream_id"])
        await bench.start_witnesses(witnesses)
    # Triton keeps a dead core's registrations (and maps its regions) until someone unregisters
    # them: the new core does, before its first registration (TritonClient._forget_dead_cores).
    live_prefix = f"{census.SHM_PREFIX}{bench.stack.core.proc.pid}_"

    async def stale() -> list[str]:
        return [r for r in await _triton_registrations(bench) if not r.startswith(live_prefix)]

    async def swept() -> bool:
        return not await stale()

    with contextlib.suppress(TimeoutError):
        await wait_for(swept, 15, "Triton forgetting the dead cores' regions")
    left = await stale()
    figures["triton_stale_registrations"] = len(left)
    if left:
        figures["violations"].append(f"Triton still holds the dead cores' regions: {left}")
    return figures


# ---- a WebSocket client that stops reading ------------------------------------------------------


def _subscribers(bench: Bench, stream_id: str) -> int:
    return int(
        census.scrape(bench.stack.core.metrics_port).total("lva_event_subscribers", stream_id=stream_id)
    )


async def ws_stall(bench: Bench, repeats: int) -> dict[str, Any]:
    """A subscriber that stops reading: dropped by the heartbeat, costing nobody else anything."""
    figures = _figures(repeats)
    stream_id = next(iter(bench.witnesses))
    normal = await asyncio.to_thread(_subscribers, bench, stream_id)
    for attempt in range(repeats):
        sock = await raw_ws_client(bench.api.ws_url, stream_id)
        try:

            async def subscribed() -> bool:
                return await asyncio.to_thread(_subscribers, bench, stream_id) > normal

            async def dropped() -> bool:
                return await asyncio.to_thread(_subscribers, bench, stream_id) <= normal

            await wait_for(subscribed, 10, "the stalled client's subscription")
            try:
                # aiohttp closes a WebSocket whose pong is late by half a heartbeat.
                figures["detect_s"].append(
                    await wait_for(dropped, 3 * HEARTBEAT_S + 10, "the stalled client dropped")
                )
                figures["recovered"] += 1
            except TimeoutError as exc:
                figures["violations"].append(f"#{attempt + 1}: {exc}")
        finally:
            sock.close()
    return figures


# ---- bad files: corrupt, truncated, and a decoder that raises mid-stream ------------------------


def _bad_files(directory: Path) -> dict[str, Path]:
    good = clip(directory, "bad-source.mp4", 4.0)
    data = good.read_bytes()
    files = {
        "garbage": (directory / "garbage.mp4", random.Random(0).randbytes(50_000)),
        "truncated": (directory / "truncated.mp4", data[: int(len(data) * 0.6)]),
    }
    # The second half of the media garbled: the first frames decode, then every packet fails.
    garbled = bytearray(data)
    rng = random.Random(1)
    for i in range(len(garbled) // 2, len(garbled)):
        garbled[i] = rng.randrange(256)
    files["garbled"] = (directory / "garbled.mp4", bytes(garbled))
    for path, content in files.values():
        if not path.exists():
            path.write_bytes(content)
    return {name: path for name, (path, _) in files.items()}


async def _file_run(bench: Bench, path: Path) -> dict[str, Any]:
    body = stream_body(path, PROBE, every=1, name=path.stem)
    # With autorestart on: a corrupt file does not heal, so the core must fail it at once rather
    # than retry it (the worker's "permanent" errors); a retry would time this run out.
    body["autorestart"] = {"restart": 1, "attempt_count": 10, "delay": 1}
    stream_id = await bench.api.create(body)
    try:
        records = await bench.api.wait_final([stream_id], timeout=60)
    finally:
        await bench.api.delete(stream_id)
    return records[0]


async def corrupt_file(bench: Bench, repeats: int) -> dict[str, Any]:
    """A garbage file fails with corrupt_data; a truncated one plays up to its cut (done)."""
    figures = _figures(repeats * 2)
    files = await asyncio.to_thread(_bad_files, bench.clips)
    figures["failed_cleanly"] = 0
    for attempt in range(repeats):
        started = time.monotonic()
        garbage = await _file_run(bench, files["garbage"])
        figures["detect_s"].append(time.monotonic() - started)
        if garbage["status"] == "failure" and "corrupt_data" in (garbage["error"] or ""):
            figures["failed_cleanly"] += 1
        else:
            figures["violations"].append(f"#{attempt + 1} garbage: {garbage['status']} ({garbage['error']})")
        truncated = await _file_run(bench, files["truncated"])
        if truncated["status"] == "done" and int(truncated["statistics"]["frames_processed"]) > 0:
            figures["recovered"] += 1  # played up to the cut, as players do
        else:
            figures["violations"].append(
                f"#{attempt + 1} truncated: {truncated['status']} ({truncated['error']})"
            )
    return figures


async def decoder_raise(bench: Bench, repeats: int) -> dict[str, Any]:
    """A file whose second half is garbage: the decoder raises on packet after packet mid-stream,
    and the stream fails with corrupt_data after the good frames."""
    figures = _figures(repeats)
    files = await asyncio.to_thread(_bad_files, bench.clips)
    figures["failed_cleanly"] = 0
    figures["frames_before_failure"] = []
    for attempt in range(repeats):
        started = time.monotonic()
        record = await _file_run(bench, files["garbled"])
        figures["detect_s"].append(time.monotonic() - started)
        processed = int(record["statistics"]["frames_processed"])
        figures["frames_before_failure"].append(processed)
        if record["status"] == "failure" and "corrupt_data" in (record["error"] or "") and processed > 0:
            figures["failed_cleanly"] += 1
        else:
            figures["violations"].append(
                f"#{attempt + 1}: {record['status']} ({record['error']}) after {processed} frames"
            )
    return figures


FAULTS: dict[str, Fault] = {
    "rtsp_kill": rtsp_kill,
    "rtsp_freeze": rtsp_freeze,
    "triton_kill": triton_kill,
    "core_restart": core_restart,
    "ws_stall": ws_stall,
    "corrupt_file": corrupt_file,
    "decoder_raise": decoder_raise,
}


# ---- one fault, with what it must leave intact ---------------------------------------------------


async def run_fault(bench: Bench, name: str, sizes: Sizes) -> dict[str, Any]:
    """Witnesses up, baseline (rates, census), the fault, an after window, the census settled."""
    repeats = getattr(sizes, name)
    if len(bench.witnesses) < sizes.witnesses:
        await bench.start_witnesses(sizes.witnesses - len(bench.witnesses))
    await asyncio.sleep(1.0)  # past the witnesses' start-up
    start = time.monotonic()
    await asyncio.sleep(sizes.window_s)
    baseline_rates = bench.witness_rates(start, time.monotonic())
    baseline = await asyncio.to_thread(bench.census)
    lost_before = bench.witness_lost()

    fault_start = time.monotonic()
    figures = await FAULTS[name](bench, repeats)
    fault_end = time.monotonic()
    await asyncio.sleep(sizes.window_s)
    after_end = time.monotonic()

    shared = bool(figures.pop("shared", False))
    reference = statistics.median(baseline_rates) if baseline_rates else 0.0
    # A fault over in a second (a bad file) is judged over one whole window, not a noisy sliver.
    during = bench.witness_rates(fault_start, max(fault_end, fault_start + sizes.window_s))
    after = bench.witness_rates(fault_end, after_end)
    violations: list[str] = figures.pop("violations")
    floor = MIN_RATE_RATIO * reference
    if reference <= 0:
        violations.append("the witnesses had no events before the fault")
    if any(rate < floor for rate in after):
        violations.append(f"witness rates after the fault {after} below {floor:.2f}/s")
    if not shared and any(rate < floor for rate in during):
        violations.append(f"witness rates during the fault {during} below {floor:.2f}/s")

    # A slow subscriber loses only its own messages (docs/streams.md): the witnesses read at
    # once, whatever the fault, so the bus must never have dropped one of theirs.
    lost = bench.witness_lost() - lost_before
    if lost:
        violations.append(
            f"the witnesses lost {lost} messages (lost_messages): another subscriber slowed them"
        )

    settled = await bench.settle(baseline)
    for service, result in settled.items():
        if result["excess"]:
            violations.append(f"{service} leaked {result['excess']} (census {result['census']})")
    return {
        "fault": name,
        "injected": figures.pop("injected"),
        "recovered": figures.pop("recovered"),
        **{k: v for k, v in figures.items() if k not in ("detect_s", "recovery_s")},
        "detect_s": summary(figures["detect_s"]),
        "recovery_s": summary(figures["recovery_s"]),
        "witness_events_per_s": {"baseline": baseline_rates, "during": during, "after": after},
        "witness_events_lost": lost,
        "witness_events_missing": bench.witness_missing(fault_start, after_end),
        "census_baseline": baseline,
        "census_after": {s: r["census"] for s, r in settled.items()},
        "census_delta": {s: r["delta"] for s, r in settled.items()},
        "census_settled_s": {s: r["settled_s"] for s, r in settled.items()},
        "violations": violations,
    }


def brief(result: dict[str, Any]) -> str:
    """One line of figures for a CI log."""
    keys = (
        "injected",
        "recovered",
        "failed_cleanly",
        "witness_events_lost",
        "witness_events_missing",
        "streams_restored",
        "triton_stale_registrations",
        "triton_shm_left",
    )
    parts = [f"{k}={result[k]}" for k in keys if k in result]
    parts.append(f"detect_p50={result['detect_s']['p50']}s recovery_p50={result['recovery_s']['p50']}s")
    parts.append(f"rates={json.dumps(result['witness_events_per_s'])}")
    parts.append(f"census_delta={json.dumps(result['census_delta'])}")
    return f"{result['fault']}: " + " ".join(parts)
