"""Model control for MLOps through the real core and facade, with frames flowing: hot swap,
a broken version rejected while the old one serves, poll mode, unload/load, bad names.

"With frames flowing" means the core's own streams: live RTSP cameras (a real GStreamer RTSP
server) whose every frame goes through the ``pipeline_probe`` analytic, the core's batcher and
Triton's ``frame_stats`` model, with their events read over the facade's WebSocket. A swap has
zero errors when the core counted no failed inference of the model, no stream shows an error,
every stream's events kept coming after it, and the new version served the streams' frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from lva.v1 import models_pb2, models_pb2_grpc
from lva_core.inference.client import TritonClient
from lva_core.runtime.triton_server import LocalTriton
from lva_testkit.clips import clip
from lva_testkit.rtsp_server import RtspServer
from lva_testkit.stack import Service, start_core, start_facade
from lva_testkit.streams import assert_luna_error, create, delete, get, wait_status
from lva_testkit.triton import copy_models, local_triton

BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("this version is broken on purpose")

    def execute(self, requests):
        return []
"""
# pipeline_probe's one role on the only model these Tritons hold.
CORE_ENV = {"LVA_TRITON__MODELS": "{pipeline_probe: {model: frame_stats}}"}
STREAMS = 2  # streams flowing at once: their frames share the core's batcher


def _repository(tmp: Path) -> Path:
    return copy_models(tmp / "repo", "frame_stats")


def _add_version(repo: Path, version: int, broken: bool = False) -> None:
    target = repo / "frame_stats" / str(version)
    shutil.copytree(repo / "frame_stats" / "1", target)
    if broken:
        (target / "model.py").write_text(BROKEN_MODEL)


async def _triton(repo: Path, mode: str = "explicit", extra: list[str] | None = None) -> LocalTriton:
    server = local_triton(repo, model_control_mode=mode, extra_args=extra)
    await server.start()
    return server


async def _version_counts(url: str) -> dict[str, int]:
    """Successful inferences of frame_stats per version, as Triton counts them."""
    client = TritonClient(url, shared_memory=False, pool_bytes=0, timeout=5)
    try:
        stats = await client.statistics("frame_stats")
    finally:
        await client.close()
    return {
        s["version"]: int(s.get("inference_stats", {}).get("success", {}).get("count", 0))
        for s in stats["model_stats"]
    }


async def _inference_errors(http: aiohttp.ClientSession, core: Service) -> float:
    """The core's failed inference requests of frame_stats, every error code together."""
    async with http.get(f"http://127.0.0.1:{core.metrics_port}/metrics") as resp:
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "lva_inference_errors"
        for sample in family.samples
        if sample.name == "lva_inference_errors_total" and sample.labels.get("model") == "frame_stats"
    )


@dataclass
class Flow:
    """Live streams through pipeline_probe, with every event's arrival time per stream."""

    http: aiohttp.ClientSession
    base_url: str
    ids: list[str] = field(default_factory=list)
    arrivals: dict[str, list[float]] = field(default_factory=dict)

    def events_since(self, moment: float) -> dict[str, int]:
        return {stream_id: sum(t >= moment for t in self.arrivals[stream_id]) for stream_id in self.ids}

    async def wait_events_since(self, moment: float, count: int, timeout: float = 30) -> None:
        """Until every stream has ``count`` events that arrived after ``moment``."""
        deadline = time.monotonic() + timeout
        while min(self.events_since(moment).values()) < count:
            assert time.monotonic() < deadline, f"events since the moment: {self.events_since(moment)}"
            await asyncio.sleep(0.1)

    async def assert_clean(self) -> None:
        """Every stream still processing, with no inference error shown."""
        for stream_id in self.ids:
            stream = await get(self.http, self.base_url, stream_id)
            assert stream["status"] == "in_progress", stream
            assert stream["statistics"]["last_error"] is None, stream["statistics"]


def _probe_stream(url: str) -> dict[str, object]:
    return {
        "name": "probe",
        "data": {"reference": url, "type": "stream", "frame_processing": {"rate": {"period": 1}}},
        "analytics": [{"analytic_name": "pipeline_probe"}],
        "autorestart": {"restart": 1, "attempt_count": 30, "delay": 0.5},
    }


@contextlib.asynccontextmanager
async def flowing(http: aiohttp.ClientSession, facade: Service, camera: RtspServer) -> AsyncIterator[Flow]:
    """``STREAMS`` live streams processing, each watched; deleted on the way out, whatever happened."""
    base_url = f"http://{facade.address}"
    flow = Flow(http, base_url)
    readers: list[asyncio.Task[None]] = []

    async def read(stream_id: str, subscribed: asyncio.Event) -> None:
        async with websockets.connect(f"ws://{facade.address}/1/ws?stream_id={stream_id}") as ws:
            async for data in ws:
                subscribed.set()  # the first message is the current status: subscribed
                if "pipeline_probe" in json.loads(data)["analytics_results"]:
                    flow.arrivals[stream_id].append(time.monotonic())

    try:
        for _ in range(STREAMS):
            stream_id = await create(http, base_url, _probe_stream(camera.url))
            flow.ids.append(stream_id)
            flow.arrivals[stream_id] = []
            subscribed = asyncio.Event()
            readers.append(asyncio.create_task(read(stream_id, subscribed)))
            async with asyncio.timeout(20):
                await subscribed.wait()
        for stream_id in flow.ids:
            await wait_status(http, base_url, stream_id, {"in_progress"}, 30)
        await flow.wait_events_since(0.0, 5)  # frames flow through every stream
        yield flow
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for stream_id in flow.ids:
            await delete(http, base_url, stream_id)


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-control")


@pytest.fixture(scope="module")
def camera(stack_dir: Path) -> Iterator[RtspServer]:
    """A live camera, small so that several streams of it cost the machine little but decoding."""
    server = RtspServer(clip(stack_dir, "camera.mp4", seconds=4.0, size=(320, 240)), stack_dir / "rtsp.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def explicit(stack_dir: Path) -> AsyncIterator[tuple[LocalTriton, Path]]:
    repo = _repository(stack_dir)
    server = await _triton(repo)
    yield server, repo
    await server.stop()


@pytest.fixture(scope="module")
def services(stack_dir: Path, explicit: tuple[LocalTriton, Path]) -> Iterator[tuple[Service, Service]]:
    core = start_core(stack_dir, explicit[0].grpc_url, CORE_ENV)
    try:
        facade = start_facade(stack_dir, core.address)
    except BaseException:
        core.stop()
        raise
    yield core, facade
    facade.stop()
    core.stop()


async def _models(http: aiohttp.ClientSession, facade: Service) -> list[dict[str, str]]:
    async with http.get(f"http://{facade.address}/1/models") as resp:
        assert resp.status == 200
        return list((await resp.json())["models"])


async def test_index_lists_models(http: aiohttp.ClientSession, services: tuple[Service, Service]) -> None:
    models = await _models(http, services[1])
    assert {"name": "frame_stats", "version": "1", "state": "READY", "reason": ""} in models
    async with http.get(f"http://{services[1].address}/1/models", params={"ready": "1"}) as resp:
        ready = (await resp.json())["models"]
    assert ready and all(m["state"] == "READY" for m in ready), ready


async def test_hot_swap_under_load_has_zero_errors(
    http: aiohttp.ClientSession,
    services: tuple[Service, Service],
    explicit: tuple[LocalTriton, Path],
    camera: RtspServer,
) -> None:
    server, repo = explicit
    core, facade = services
    _add_version(repo, 2)
    async with flowing(http, facade, camera) as flow:
        errors = await _inference_errors(http, core)
        async with http.post(f"http://{facade.address}/1/models/frame_stats/load") as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        swapped = time.monotonic()
        assert {"name": "frame_stats", "version": "2", "state": "READY", "reason": ""} in body["models"]
        # The streams' frames now go to version 2 (nothing else in this module infers).
        before = (await _version_counts(server.grpc_url)).get("2", 0)
        deadline = time.monotonic() + 30
        while (await _version_counts(server.grpc_url)).get("2", 0) < before + 10:
            assert time.monotonic() < deadline, "version 2 never served the streams"
            await asyncio.sleep(0.2)
        await flow.wait_events_since(swapped, 10)  # every stream kept its events coming
        await flow.assert_clean()
        assert await _inference_errors(http, core) == errors


async def test_broken_version_is_rejected_and_old_keeps_serving(
    http: aiohttp.ClientSession,
    services: tuple[Service, Service],
    explicit: tuple[LocalTriton, Path],
    camera: RtspServer,
) -> None:
    server, repo = explicit
    core, facade = services
    _add_version(repo, 3, broken=True)
    try:
        async with flowing(http, facade, camera) as flow:
            errors = await _inference_errors(http, core)
            async with http.post(f"http://{facade.address}/1/models/frame_stats/load") as resp:
                assert resp.status == 500
                body = await resp.json()
            refused = time.monotonic()
            assert_luna_error(body, 47103)
            assert "broken on purpose" in body["detail"]
            serving = (await _version_counts(server.grpc_url)).get("2", 0)
            await flow.wait_events_since(refused, 10)
            assert (await _version_counts(server.grpc_url))["2"] > serving  # version 2 still serves
            await flow.assert_clean()
            assert await _inference_errors(http, core) == errors
        by_version = {m["version"]: m for m in await _models(http, facade) if m["name"] == "frame_stats"}
        assert by_version["3"]["state"] == "UNAVAILABLE" and "broken on purpose" in by_version["3"]["reason"]
        assert by_version["2"]["state"] == "READY"
    finally:
        shutil.rmtree(repo / "frame_stats" / "3")


async def test_unload_and_load_over_grpc(services: tuple[Service, Service]) -> None:
    async with grpc.aio.insecure_channel(services[0].address) as channel:
        stub = models_pb2_grpc.ModelsServiceStub(channel)
        await stub.UnloadModel(models_pb2.UnloadModelRequest(model_name="frame_stats"))
        index = await stub.ListModels(models_pb2.ListModelsRequest())
        listed = [m for m in index.models if m.name == "frame_stats"]
        assert listed and all(m.state != "READY" for m in listed), listed
        reply = await stub.LoadModel(models_pb2.LoadModelRequest(model_name="frame_stats"))
        assert any(m.state == "READY" for m in reply.models)


async def test_bad_model_names(http: aiohttp.ClientSession, services: tuple[Service, Service]) -> None:
    facade = services[1]
    async with http.post(f"http://{facade.address}/1/models/no_such_model/load") as resp:
        assert resp.status == 404
        assert_luna_error(await resp.json(), 47102)
    async with http.post(f"http://{facade.address}/1/models/bad%20name!/unload") as resp:
        assert resp.status == 400
        assert_luna_error(await resp.json(), 12012)


async def test_poll_mode_picks_up_a_new_version_with_zero_errors(
    http: aiohttp.ClientSession, tmp_path: Path, camera: RtspServer
) -> None:
    # Triton polls its repository: a version dropped in is loaded with no API call, under the
    # streams of a core of this test's own.
    repo = _repository(tmp_path)
    server = await _triton(repo, "poll", ["--repository-poll-secs=1"])
    try:
        core = start_core(tmp_path, server.grpc_url, CORE_ENV)
        try:
            facade = start_facade(tmp_path, core.address)
            try:
                async with flowing(http, facade, camera) as flow:
                    errors = await _inference_errors(http, core)
                    _add_version(repo, 2)
                    deadline = time.monotonic() + 30
                    while (await _version_counts(server.grpc_url)).get("2", 0) < 10:
                        assert time.monotonic() < deadline, "version 2 was never picked up"
                        await asyncio.sleep(0.2)
                    await flow.wait_events_since(time.monotonic(), 10)
                    await flow.assert_clean()
                    assert await _inference_errors(http, core) == errors
            finally:
                facade.stop()
        finally:
            core.stop()
    finally:
        await server.stop()
