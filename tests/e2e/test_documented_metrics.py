"""The documented metrics (docs/observability.md) that no other test asserts, each with its labels
and a value that moved because of what the test did.

A core of this module's own serves them, so that no other test's streams move its series: the
hot-path histograms, the event bus counters and gauges, the gRPC latency, the loop-lag
histogram, the task and thread gauges, and the process metrics of both services.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeAlias

import aiohttp
import grpc
import pytest
from google.protobuf import struct_pb2

from lva.v1 import agent_pb2, agent_pb2_grpc, streams_pb2, streams_pb2_grpc
from lva_core.runtime import procfs
from lva_testkit.clips import clip
from lva_testkit.documented import Samples, labels, poll, scrape
from lva_testkit.rtsp_server import RtspServer
from lva_testkit.stack import Service, start_core

S = streams_pb2
NONE = frozenset[tuple[str, str]]()
# Subscriptable only in the stubs, hence the string alias.
Watch: TypeAlias = "grpc.aio.UnaryStreamCall[streams_pb2.WatchStreamRequest, streams_pb2.WatchStreamResponse]"


@pytest.fixture(scope="module")
def own_core(log_dir: Path, triton: Service) -> Iterator[Service]:
    service = start_core(log_dir, triton.address)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
async def channel(own_core: Service) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(own_core.address) as chan:
        yield chan


def _metrics_url(core: Service) -> str:
    return f"http://127.0.0.1:{core.metrics_port}/metrics"


def _delta(after: Samples, before: Samples, name: str, series: frozenset[tuple[str, str]] = NONE) -> float:
    return after.get((name, series), 0.0) - before.get((name, series), 0.0)


def _counter(rate_period: int = 1) -> S.AnalyticConfig:
    parameters = struct_pb2.Struct()
    parameters.update({"probe_count": 1, "rate": {"period": rate_period, "unit": "frame"}})
    return S.AnalyticConfig(analytic_name="people_counter", parameters=parameters)


async def _next(call: Watch) -> streams_pb2.WatchStreamResponse:
    message = await call.read()
    assert isinstance(message, streams_pb2.WatchStreamResponse), message
    return message


async def test_one_streams_frames_events_and_rpcs_move_their_series_by_what_it_did(
    own_core: Service, channel: grpc.aio.Channel, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    stub = streams_pb2_grpc.StreamsServiceStub(channel)
    request = S.CreateStreamRequest(
        data=S.StreamData(
            reference=str(clip(tmp_path, seconds=1.0)),
            type=S.SOURCE_TYPE_VIDEOFILE,
            frame_processing=S.FrameProcessing(rate=S.Rate(period=5, unit=S.RATE_UNIT_FRAME)),
        ),
        analytics=[_counter()],
        status=S.STREAM_STATUS_PAUSE,
    )
    stream_id = (await stub.CreateStream(request)).stream_id
    url = _metrics_url(own_core)
    watched = labels(stream_id=stream_id)
    try:
        call = stub.WatchStream(S.WatchStreamRequest(stream_id=stream_id))
        seen = [await _next(call)]  # the current status: sent to this watcher, not published
        assert (await scrape(http, url))[("lva_event_subscribers", watched)] == 1
        before = await scrape(http, url)
        await stub.UpdateStream(S.UpdateStreamRequest(stream_id=stream_id, status=S.STREAM_STATUS_PENDING))
        async with asyncio.timeout(120):
            while seen[-1].stream_status != S.STREAM_STATUS_DONE:
                seen.append(await _next(call))
        processed = (await stub.GetStream(S.GetStreamRequest(stream_id=stream_id))).stream.statistics
        for _ in range(2):
            await stub.GetStream(S.GetStreamRequest(stream_id=stream_id))
        after = await scrape(http, url)
        call.cancel()
    finally:
        await stub.DeleteStream(S.DeleteStreamRequest(stream_id=stream_id))

    frames = processed.frames_processed
    assert frames == 5  # 25 frames, every fifth sampled
    # The hot-path histograms: one observation per analysed frame, and one queue wait per item.
    assert _delta(after, before, "lva_frame_decode_seconds_count") == frames
    assert _delta(after, before, "lva_frame_analysis_seconds_count") == frames
    assert _delta(after, before, "lva_frame_analysis_seconds_sum") > 0
    detector = labels(model="person_detector")
    assert _delta(after, before, "lva_inference_queue_seconds_count", detector) == frames
    assert _delta(after, before, "lva_inference_queue_seconds_sum", detector) >= 0
    # Everything the watcher got after its first message was published on the bus, and nothing else.
    assert _delta(after, before, "lva_event_messages_published_total") == len(seen) - 1
    assert _delta(after, before, "lva_event_messages_dropped_total") == 0
    # Unary RPCs are timed (GetStream three times); the watch is not a unary RPC.
    get_stream = labels(method="/lva.v1.StreamsService/GetStream")
    assert _delta(after, before, "lva_grpc_request_duration_seconds_count", get_stream) == 3
    update = labels(method="/lva.v1.StreamsService/UpdateStream")
    assert _delta(after, before, "lva_grpc_request_duration_seconds_count", update) == 1
    watch = labels(method="/lva.v1.StreamsService/WatchStream")
    assert ("lva_grpc_request_duration_seconds_count", watch) not in after

    async def unsubscribed() -> bool:
        samples = await scrape(http, url)
        return samples.get(("lva_event_subscribers", watched), 0.0) == 0

    await poll(unsubscribed, 10, "lva_event_subscribers after the watch ended")


async def test_the_event_loop_lag_histogram_keeps_observing(
    own_core: Service, http: aiohttp.ClientSession
) -> None:
    url = _metrics_url(own_core)
    start = (await scrape(http, url))[("lva_core_event_loop_lag_seconds_count", NONE)]

    async def grew() -> bool:
        return (await scrape(http, url))[("lva_core_event_loop_lag_seconds_count", NONE)] >= start + 3

    # A 100 ms timer: its observations keep coming whatever the core is doing.
    await poll(grew, 30, "lva_core_event_loop_lag_seconds observations")
    samples = await scrape(http, url)
    assert samples[("lva_core_event_loop_lag_seconds_sum", NONE)] >= 0
    assert samples[("lva_core_asyncio_tasks", NONE)] >= 1


@pytest.fixture
def camera(tmp_path: Path, log_dir: Path) -> Iterator[RtspServer]:
    server = RtspServer(clip(tmp_path, "live.mp4", seconds=4.0), log_dir / "rtsp-metrics.log", respawn=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_running_stream_has_one_decode_thread_and_its_delete_leaves_none(
    own_core: Service, channel: grpc.aio.Channel, http: aiohttp.ClientSession, camera: RtspServer
) -> None:
    url = _metrics_url(own_core)
    decode = ("lva_core_threads", labels(kind="decode"))
    tasks = ("lva_core_asyncio_tasks", NONE)
    idle = await scrape(http, url)
    assert idle.get(decode, 0.0) == 0  # this core runs no other stream
    stub = streams_pb2_grpc.StreamsServiceStub(channel)
    request = S.CreateStreamRequest(
        data=S.StreamData(reference=camera.url, type=S.SOURCE_TYPE_STREAM),
        autorestart=S.Autorestart(restart=1, attempt_count=10, delay=0.2),
    )
    stream_id = (await stub.CreateStream(request)).stream_id
    try:

        async def running() -> Samples | None:
            stream = (await stub.GetStream(S.GetStreamRequest(stream_id=stream_id))).stream
            samples = await scrape(http, url)
            ok = stream.status == S.STREAM_STATUS_IN_PROGRESS and samples.get(decode) == 1
            return samples if ok else None

        busy = await poll(running, 60, "one decode thread for the running stream")
        assert busy[tasks] > idle[tasks]  # the stream's worker and analysis are tasks
    finally:
        await stub.DeleteStream(S.DeleteStreamRequest(stream_id=stream_id))

    async def released() -> bool:
        samples = await scrape(http, url)
        return samples.get(decode, 0.0) == 0 and samples[tasks] <= idle[tasks]

    # Deleting the stream ends its thread and its tasks: nothing is left to leak.
    await poll(released, 30, "the stream's decode thread and tasks after its delete")


async def test_process_metrics_of_both_services_are_their_own_processes(
    own_core: Service, facade: Service, channel: grpc.aio.Channel, http: aiohttp.ClientSession
) -> None:
    await agent_pb2_grpc.AgentServiceStub(channel).GetVersion(agent_pb2.GetVersionRequest())
    for service, url in ((own_core, _metrics_url(own_core)), (facade, f"http://{facade.address}/metrics")):
        samples = await scrape(http, url)
        pid = service.proc.pid
        rss = samples[("process_resident_memory_bytes", NONE)]
        assert rss == pytest.approx(procfs.rss_kib(pid) * 1024, rel=0.25), service.name
        fds = samples[("process_open_fds", NONE)]
        assert abs(fds - procfs.fd_count(pid)) <= 5, service.name  # the scrape's own sockets
        assert 0 < samples[("process_cpu_seconds_total", NONE)] <= procfs.cpu_seconds(pid) + 0.5
