"""Fault injection and churn against the real stack, in their bounded CI form.

The same code as ``make reliability`` (reliability/), with fewer repetitions: each fault is
injected into a stack of this module's own (its own Triton, core, facade and RTSP cameras, so
that killing them leaves the session's stack alone) while witness streams run beside it. A
test fails when a guarantee breaks: the faulted stream does not recover (or does not fail
cleanly where that is the contract), a witness loses more than half of its event rate, or a
thread, task, file descriptor, process or shared-memory region is left behind. Last, the
delivery section (reliability/delivery.py, small): callbacks through receiver outages, a broker
restart and a core kill, where every produced event must reach every callback. The figures
are printed (``pytest -s``, or the captured output of a failure) for the CI log.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from reliability.bench import Bench, start_bench, wait_for
from reliability.churn import churn
from reliability.delivery import DeliverySizes, run_delivery
from reliability.delivery import brief as delivery_brief
from reliability.faults import FAULTS, Sizes, brief, run_fault

pytestmark = pytest.mark.e2e
SIZES = Sizes.ci()
DELIVERY = DeliverySizes.ci()
LANE_KEYS = {
    "callback",
    "role",
    "type",
    "target",
    "produced",
    "delivered",
    "duplicates",
    "dropped",
    "lost_at_kill",
    "missing",
    "out_of_order",
    "attempts_failed",
    "pending_at_end",
    "errors_seen",
}


@pytest.fixture(scope="module")
async def bench(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Bench]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        bench = await start_bench(Path(tmp_path_factory.mktemp("reliability")), http)
        try:
            yield bench
        finally:
            await bench.stop()


@pytest.mark.parametrize("name", list(FAULTS))
async def test_fault_is_survived_without_leaks(bench: Bench, name: str) -> None:
    result = await run_fault(bench, name, SIZES)
    print(brief(result))
    assert result["injected"] > 0
    if name in ("corrupt_file", "decoder_raise"):
        # The contract for a bad file: failure with corrupt_data, nothing else touched.
        assert result["failed_cleanly"] == getattr(SIZES, name), result["violations"]
    else:
        assert result["recovered"] == result["injected"], result["violations"]
    assert result["witness_events_lost"] == 0, result  # also a violation: named for the CI log
    assert result["violations"] == [], json.dumps(result, indent=1)


async def test_census_sees_a_stream_left_behind(bench: Bench) -> None:
    """The leak check can fail: a stream not deleted is a decoding thread and a subscriber too many."""
    baseline = await asyncio.to_thread(bench.census)
    stream_id = await bench.api.create(bench.live_body(bench.witness_camera.url, "left-behind"))
    watcher = bench.api.watch(stream_id).start()
    try:

        async def processing() -> bool:
            return int((await bench.api.get(stream_id))["statistics"]["frames_processed"]) > 0

        await wait_for(processing, 60, "the left-behind stream's first frames")
        settled = await bench.settle(baseline, timeout=2)
        assert settled["core"]["excess"]["decode_threads"] == 1, settled
        assert settled["core"]["excess"]["subscribers"] == 1, settled
    finally:
        await watcher.close()
        await bench.api.delete(stream_id)
    assert (await bench.settle(baseline))["core"]["excess"] == {}


async def test_churn_leaves_nothing_behind(bench: Bench) -> None:
    result = await churn(bench, SIZES.churn_cycles, SIZES.churn_lanes)
    print(
        f"churn: {result['cycles']} cycles in {result['seconds']} s, counts {result['counts']}, "
        f"census delta {result['census_delta']}, RSS growth {json.dumps(result['rss_growth'])}"
    )
    assert result["counts"]["created"] == result["counts"]["deleted"] == SIZES.churn_cycles
    assert result["counts"]["abrupt"] > 0 and result["counts"]["paused"] > 0
    assert result["violations"] == [], json.dumps(result, indent=1)


async def test_every_produced_event_reaches_every_callback(bench: Bench) -> None:
    """Last in the module: it kills the core (a new one takes the same store and address)."""
    result = await run_delivery(bench, DELIVERY)
    print(delivery_brief(result))
    lanes = result["callbacks"]
    assert [(c["role"], c["type"]) for c in lanes] == [
        ("broken", "http"),
        ("restarted", "mqtt"),
        ("witness", "http"),
    ]
    produced = result["produced"]
    assert produced >= 20, result  # 5 events/s while the core is up, fewer where frames are dropped
    assert result["produced_after_last_kill"] > 0 and len(result["core_kills"]) == DELIVERY.core_kills
    for lane in lanes:
        assert set(lane) == LANE_KEYS, lane
        assert lane["produced"] == produced
        assert lane["delivered"] + lane["lost_at_kill"] + lane["missing"] == produced, lane
        assert min(lane["duplicates"], lane["dropped"], lane["attempts_failed"]) >= 0, lane
    # The faults were felt: the broken receiver's refusals, 500s and hangs; the broker's restart.
    errors = " ".join(lanes[0]["errors_seen"])
    assert "HTTP 500" in errors and "no answer within" in errors, lanes[0]
    assert lanes[1]["attempts_failed"] > 0, lanes[1]
    latency = result["latency"]
    for kind in ("http", "mqtt"):
        figures = latency[kind]["created_to_received_ms"]
        assert figures["n"] > 0 and 0 < figures["p50"] <= figures["p99"], latency
        assert latency[kind]["outbox_to_accepted_ms"]["n"] > 0, latency
    encode = result["image_encode"]
    assert encode["frame"] == [1280, 720] and encode["calls"] == DELIVERY.encode_calls
    assert encode["cpu_ms_per_call"] > 0 and encode["jpeg_bytes"]["min"] > 0, encode
    assert result["violations"] == [], json.dumps(result, indent=1)
