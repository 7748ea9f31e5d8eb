"""Model control for MLOps through the real core and facade, with frames flowing: hot swap,
a broken version rejected while the old one serves, poll mode, unload/load, bad names."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
from skimage import data

from lva.v1 import models_pb2, models_pb2_grpc
from lva_core.inference.batcher import ModelBatcher
from lva_core.inference.client import TritonClient
from lva_core.runtime.triton_server import LocalTriton
from lva_testkit.stack import Service, start_core, start_facade
from lva_testkit.streams import assert_luna_error
from lva_testkit.triton import copy_models, local_triton

BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("this version is broken on purpose")

    def execute(self, requests):
        return []
"""


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


@dataclass
class Load:
    """Senders that keep frames flowing through the core's batcher and count every outcome."""

    ok: int = 0
    failed: int = 0
    errors: list[str] | None = None

    async def run(self, batcher: ModelBatcher, stop: asyncio.Event, senders: int = 4) -> None:
        frame = data.astronaut()
        expected = frame.mean(axis=(0, 1))
        self.errors = []

        async def sender() -> None:
            while not stop.is_set():
                try:
                    out = await batcher.infer({"IMAGE": frame})
                    np.testing.assert_allclose(out["MEAN_RGB"], expected, atol=1e-3)
                    self.ok += 1
                except Exception as exc:  # every failure counts; the test wants zero
                    self.failed += 1
                    assert self.errors is not None
                    self.errors.append(repr(exc))

        await asyncio.gather(*(sender() for _ in range(senders)))


@contextlib.asynccontextmanager
async def flowing(url: str) -> AsyncIterator[Load]:
    client = TritonClient(url, shared_memory=True, pool_bytes=64 << 20, timeout=10)
    batcher = ModelBatcher(client, "frame_stats", timeout=10)
    load, stop = Load(), asyncio.Event()
    task = asyncio.create_task(load.run(batcher, stop))
    await asyncio.sleep(0.5)
    try:
        yield load
    finally:
        stop.set()
        await task
        await batcher.close()
        await client.close()


async def _version_counts(url: str) -> dict[str, int]:
    client = TritonClient(url, shared_memory=False, pool_bytes=0, timeout=5)
    try:
        stats = await client.statistics("frame_stats")
    finally:
        await client.close()
    return {
        s["version"]: int(s.get("inference_stats", {}).get("success", {}).get("count", 0))
        for s in stats["model_stats"]
    }


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-control")


@pytest.fixture(scope="module")
async def explicit(stack_dir: Path) -> AsyncIterator[tuple[LocalTriton, Path]]:
    repo = _repository(stack_dir)
    server = await _triton(repo)
    yield server, repo
    await server.stop()


@pytest.fixture(scope="module")
def services(stack_dir: Path, explicit: tuple[LocalTriton, Path]) -> Iterator[tuple[Service, Service]]:
    core = start_core(
        stack_dir, explicit[0].grpc_url, {"LVA_TRITON__MODELS": "{probe: {model: frame_stats}}"}
    )
    facade = start_facade(stack_dir, core.address)
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
        assert all(m["state"] == "READY" for m in (await resp.json())["models"])


async def test_hot_swap_under_load_has_zero_errors(
    http: aiohttp.ClientSession, services: tuple[Service, Service], explicit: tuple[LocalTriton, Path]
) -> None:
    server, repo = explicit
    facade = services[1]
    _add_version(repo, 2)
    async with flowing(server.grpc_url) as load:
        async with http.post(f"http://{facade.address}/1/models/frame_stats/load") as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert {"name": "frame_stats", "version": "2", "state": "READY", "reason": ""} in body["models"]
        before = (await _version_counts(server.grpc_url)).get("2", 0)
        await asyncio.sleep(1.0)  # keep flowing on the new version
    assert load.failed == 0, load.errors
    assert load.ok > 20
    assert (await _version_counts(server.grpc_url))["2"] > before  # version 2 now serves


async def test_broken_version_is_rejected_and_old_keeps_serving(
    http: aiohttp.ClientSession, services: tuple[Service, Service], explicit: tuple[LocalTriton, Path]
) -> None:
    server, repo = explicit
    facade = services[1]
    _add_version(repo, 3, broken=True)
    async with flowing(server.grpc_url) as load:
        async with http.post(f"http://{facade.address}/1/models/frame_stats/load") as resp:
            assert resp.status == 500
            body = await resp.json()
        assert_luna_error(body, 47103)
        assert "broken on purpose" in body["detail"]
        await asyncio.sleep(0.5)
    assert load.failed == 0, load.errors
    assert load.ok > 10
    by_version = {m["version"]: m for m in await _models(http, facade) if m["name"] == "frame_stats"}
    assert by_version["3"]["state"] == "UNAVAILABLE" and "broken on purpose" in by_version["3"]["reason"]
    assert by_version["2"]["state"] == "READY"
    shutil.rmtree(repo / "frame_stats" / "3")


async def test_unload_and_load_over_grpc(services: tuple[Service, Service]) -> None:
    async with grpc.aio.insecure_channel(services[0].address) as channel:
        stub = models_pb2_grpc.ModelsServiceStub(channel)
        await stub.UnloadModel(models_pb2.UnloadModelRequest(model_name="frame_stats"))
        index = await stub.ListModels(models_pb2.ListModelsRequest())
        assert all(m.state != "READY" for m in index.models if m.name == "frame_stats")
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


async def test_poll_mode_picks_up_a_new_version_with_zero_errors(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    server = await _triton(repo, "poll", ["--repository-poll-secs=1"])
    try:
        async with flowing(server.grpc_url) as load:
            _add_version(repo, 2)
            deadline = asyncio.get_running_loop().time() + 20
            while (await _version_counts(server.grpc_url)).get("2", 0) == 0:
                assert asyncio.get_running_loop().time() < deadline, "version 2 was never picked up"
                await asyncio.sleep(0.5)
        assert load.failed == 0, load.errors
        assert load.ok > 20
    finally:
        await server.stop()
