"""Configuration keys (docs/configuration.md) that no test exercised, each on a core or facade
started with it, observed from outside:

- ``triton.shared_memory``: ``system`` (and ``auto``, Triton being on loopback) registers the
  core's regions with Triton, ``none`` never does, and any other value stops the core at startup;
- ``triton.request_timeout``: the deadline of an inference, seen in ``last_error``;
- ``facade.request_timeout``: a core that does not answer in time is 504 with 47007;
- ``streams.subscriber_queue``: a subscriber that does not read loses its oldest messages, and
  the next message it reads says how many.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeAlias

import aiohttp
import grpc
import pytest
import tritonclient.grpc.aio as tritongrpc
from google.protobuf import struct_pb2

from lva.v1 import agent_pb2, agent_pb2_grpc, streams_pb2, streams_pb2_grpc
from lva_testkit.clips import clip
from lva_testkit.documented import labels, poll, scrape, silent_port
from lva_testkit.paths import PYTHON, REPO
from lva_testkit.ports import free_port, port_open
from lva_testkit.stack import Service, core_env, start_core, start_facade
from lva_testkit.streams import assert_luna_error

S = streams_pb2
# Subscriptable only in the stubs, hence the string alias.
Watch: TypeAlias = "grpc.aio.UnaryStreamCall[streams_pb2.WatchStreamRequest, streams_pb2.WatchStreamResponse]"


def _every_frame_counter() -> S.AnalyticConfig:
    parameters = struct_pb2.Struct()
    parameters.update(
        {
            "probe_count": 1,
            "people_count_threshold": 0,
            "rate": {"period": 1, "unit": "frame"},
            "event_policy": {"trigger": "period", "interval": 0.01},
        }
    )
    return S.AnalyticConfig(analytic_name="people_counter", parameters=parameters)


def _file_request(
    path: Path, period: int = 5, status: int = S.STREAM_STATUS_PENDING
) -> S.CreateStreamRequest:
    return S.CreateStreamRequest(
        data=S.StreamData(
            reference=str(path),
            type=S.SOURCE_TYPE_VIDEOFILE,
            frame_processing=S.FrameProcessing(rate=S.Rate(period=period, unit=S.RATE_UNIT_FRAME)),
        ),
        analytics=[_every_frame_counter()],
        status=status,  # type: ignore[arg-type]
    )


async def _next(call: Watch) -> S.WatchStreamResponse:
    message = await call.read()
    assert isinstance(message, S.WatchStreamResponse), message
    return message


async def _wait_final(stub: streams_pb2_grpc.StreamsServiceAsyncStub, stream_id: str) -> S.Stream:
    async def final() -> S.Stream | None:
        stream = (await stub.GetStream(S.GetStreamRequest(stream_id=stream_id))).stream
        return stream if stream.status in (S.STREAM_STATUS_DONE, S.STREAM_STATUS_FAILURE) else None

    found: S.Stream = await poll(final, 120, f"stream {stream_id} done")
    return found


async def _run_one_stream(core: Service, path: Path) -> S.Stream:
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = streams_pb2_grpc.StreamsServiceStub(channel)
        stream_id = (await stub.CreateStream(_file_request(path))).stream_id
        try:
            return await _wait_final(stub, stream_id)
        finally:
            await stub.DeleteStream(S.DeleteStreamRequest(stream_id=stream_id))


def _shm_files(pid: int) -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"lva_{pid}_*")}


async def _regions_of(triton: Service, pid: int) -> set[str]:
    """The shared-memory regions Triton holds for the core of ``pid`` (named lva_<pid>_<n>)."""
    client = tritongrpc.InferenceServerClient(triton.address)
    try:
        status = await client.get_system_shared_memory_status(as_json=True)
    finally:
        await client.close()
    return {name for name in status.get("regions", {}) if name.startswith(f"lva_{pid}_")}


# auto: shared memory because the session's Triton is on the loopback interface.
@pytest.mark.parametrize(("mode", "registers"), [("system", True), ("none", False), ("auto", True)])
async def test_shared_memory_system_registers_regions_and_none_never_does(
    log_dir: Path, triton: Service, tmp_path: Path, mode: str, registers: bool
) -> None:
    core = start_core(log_dir, triton.address, {"LVA_TRITON__SHARED_MEMORY": mode})
    try:
        stream = await _run_one_stream(core, clip(tmp_path, seconds=1.0))
        assert stream.status == S.STREAM_STATUS_DONE
        assert stream.statistics.frames_processed == 5 and not stream.statistics.HasField("last_error")
        regions = await _regions_of(triton, core.proc.pid)
        assert bool(regions) is registers, regions
        shm_files = _shm_files(core.proc.pid)
        assert (shm_files == regions) if registers else not shm_files
    finally:
        core.stop()


def test_an_unknown_shared_memory_mode_stops_the_core_at_startup(triton: Service) -> None:
    port = free_port()
    env = core_env(triton.address, port, LVA_TRITON__SHARED_MEMORY="posix", LVA_STREAMS__STORE_PATH="")
    done = subprocess.run(
        [PYTHON, "-m", "lva_core"],
        cwd=REPO,
        env={**_plain_env(), **env},
        capture_output=True,
        timeout=60,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0
    assert "triton.shared_memory must be auto, system or none, not 'posix'" in output, output[-3000:]
    assert not port_open(port)


def _plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LVA_")}


@pytest.fixture
def silent_triton() -> Iterator[str]:
    with silent_port() as address:
        yield address


async def test_triton_request_timeout_is_the_deadline_of_one_inference(
    log_dir: Path, silent_triton: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    core = start_core(log_dir, silent_triton, {"LVA_TRITON__REQUEST_TIMEOUT": "0.5"})
    try:
        stream = await _run_one_stream(core, clip(tmp_path, seconds=1.0))
        # Every frame's inference ran out of its 0.5 s; the file was analysed to its end anyway.
        assert stream.status == S.STREAM_STATUS_DONE
        assert stream.statistics.frames_processed == 5
        assert stream.statistics.last_error == "people_counter: person_detector: no result within 0.5 s"
        metrics = await scrape(http, f"http://127.0.0.1:{core.metrics_port}/metrics")
        assert (
            metrics.get(("lva_inference_errors_total", labels(model="person_detector", code="47007")), 0) >= 1
        )
    finally:
        core.stop()


class HangingAgent(agent_pb2_grpc.AgentServiceServicer):
    """GetVersion never answers until the test ends: the facade's deadline must end the call."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def GetVersion(
        self, request: agent_pb2.GetVersionRequest, context: Any
    ) -> agent_pb2.GetVersionResponse:
        self.calls += 1
        await self.release.wait()
        return agent_pb2.GetVersionResponse()


@pytest.fixture
async def hanging_core() -> AsyncIterator[tuple[str, HangingAgent]]:
    server = grpc.aio.server()
    # Abstract in the stubs only: the methods it leaves out raise NotImplementedError at run time.
    agent = HangingAgent()  # type: ignore[abstract]
    agent_pb2_grpc.add_AgentServiceServicer_to_server(agent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", agent
    finally:
        agent.release.set()
        await server.stop(None)


async def test_facade_request_timeout_is_504_with_47007(
    hanging_core: tuple[str, HangingAgent], log_dir: Path, http: aiohttp.ClientSession
) -> None:
    address, agent = hanging_core
    facade = start_facade(log_dir, address, {"LVA_FACADE__REQUEST_TIMEOUT": "0.5"})
    try:
        async with http.get(f"http://{facade.address}/version") as resp:
            assert resp.status == 504
            assert_luna_error(await resp.json(), 47007)
        assert agent.calls == 1  # it reached the core, which did not answer in time
    finally:
        facade.stop()


@pytest.fixture(scope="module")
def small_queue_core(log_dir: Path, triton: Service) -> Iterator[Service]:
    service = start_core(log_dir, triton.address, {"LVA_STREAMS__SUBSCRIBER_QUEUE": "2"})
    try:
        yield service
    finally:
        service.stop()


async def test_a_subscriber_queue_of_two_loses_the_oldest_and_says_how_many(
    small_queue_core: Service, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    metrics_url = f"http://127.0.0.1:{small_queue_core.metrics_port}/metrics"
    dropped = ("lva_event_messages_dropped_total", frozenset[tuple[str, str]]())
    # A watcher whose transport buffers next to nothing, so that what it does not read stays in
    # the core's queue for it.
    options = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(small_queue_core.address, options=options) as channel:
        stub = streams_pb2_grpc.StreamsServiceStub(channel)
        request = _file_request(clip(tmp_path, seconds=4.0), period=1, status=S.STREAM_STATUS_PAUSE)
        stream_id = (await stub.CreateStream(request)).stream_id
        try:
            call = stub.WatchStream(S.WatchStreamRequest(stream_id=stream_id))
            assert (await _next(call)).stream_status == S.STREAM_STATUS_PAUSE
            before = (await scrape(http, metrics_url)).get(dropped, 0.0)
            await stub.UpdateStream(
                S.UpdateStreamRequest(stream_id=stream_id, status=S.STREAM_STATUS_PENDING)
            )
            await _wait_final(stub, stream_id)  # the watcher reads nothing meanwhile
            lost_by_watcher = (await scrape(http, metrics_url)).get(dropped, 0.0) - before
            messages = [await _next(call)]
            async with asyncio.timeout(30):
                while messages[-1].stream_status != S.STREAM_STATUS_DONE:
                    messages.append(await _next(call))
            call.cancel()
        finally:
            await stub.DeleteStream(S.DeleteStreamRequest(stream_id=stream_id))
    lost = [m.lost_messages for m in messages if m.lost_messages]
    assert lost, "the slow watcher lost nothing"
    assert sum(lost) == lost_by_watcher  # each loss was reported to it, and counted
    # What reached it is the newest: the stream's final status is the last message.
    assert messages[-1].stream_status == S.STREAM_STATUS_DONE
