"""The core's inference client and batcher against a real Triton (the frame_stats model)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from lva_core.inference.batcher import ModelBatcher
from lva_core.inference.client import InferenceError, TritonClient
from lva_core.runtime.triton_server import LocalTriton
from lva_testkit.triton import copy_models, local_triton


def _repository(tmp: Path) -> Path:
    return copy_models(tmp / "repo", "frame_stats")


async def _start(repo: Path, grpc_port: int | None = None) -> LocalTriton:
    triton = local_triton(repo, grpc_port=grpc_port)
    await triton.start()
    return triton


@pytest.fixture(scope="module")
async def triton(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalTriton]:
    server = await _start(_repository(tmp_path_factory.mktemp("inference")))
    yield server
    await server.stop()


@pytest.fixture
async def shm_client(triton: LocalTriton) -> AsyncIterator[TritonClient]:
    client = TritonClient(triton.grpc_url, shared_memory=True, pool_bytes=64 << 20, timeout=5)
    await client.start()
    yield client
    await client.close()


@pytest.fixture
async def plain_client(triton: LocalTriton) -> AsyncIterator[TritonClient]:
    client = TritonClient(triton.grpc_url, shared_memory=False, pool_bytes=0, timeout=5)
    yield client
    await client.close()


def _frames() -> np.ndarray:
    astronaut = data.astronaut()  # 512x512x3, a real photograph
    coffee = data.coffee()[:512, :512]  # 400x600 -> 400x512
    canvas = np.zeros_like(astronaut)
    canvas[: coffee.shape[0]] = coffee
    return np.stack([astronaut, canvas, astronaut[::-1].copy(), canvas[:, ::-1].copy()])


async def test_model_info_comes_from_triton(plain_client: TritonClient) -> None:
    info = await plain_client.model_info("frame_stats")
    assert info.max_batch_size == 16
    assert info.input("IMAGE").datatype == "UINT8"
    assert info.input("IMAGE").dims == (-1, -1, 3)
    assert {o.name for o in info.outputs} == {"MEAN_RGB", "COUNT"}
    assert info.output("MEAN_RGB").dims == (3,)


async def test_shared_memory_and_plain_paths_agree(
    shm_client: TritonClient, plain_client: TritonClient
) -> None:
    frames = _frames()
    via_shm = await shm_client.infer("frame_stats", {"IMAGE": frames})
    via_grpc = await plain_client.infer("frame_stats", {"IMAGE": frames})
    np.testing.assert_array_equal(via_shm["MEAN_RGB"], via_grpc["MEAN_RGB"])
    np.testing.assert_allclose(via_shm["MEAN_RGB"], frames.mean(axis=(1, 2)), atol=1e-3)
    assert shm_client.pool is not None and shm_client.pool.regions  # the shared path was really taken
    status = await shm_client.client.get_system_shared_memory_status(as_json=True)
    assert set(status["regions"]) >= {r.name for r in shm_client.pool.regions}


async def test_batch_of_one_and_of_eight_agree(shm_client: TritonClient) -> None:
    frames = np.concatenate([_frames(), _frames()[::-1]])
    batched = await shm_client.infer("frame_stats", {"IMAGE": frames})
    singles = [await shm_client.infer("frame_stats", {"IMAGE": f[None]}) for f in frames]
    np.testing.assert_array_equal(batched["MEAN_RGB"], np.concatenate([s["MEAN_RGB"] for s in singles]))


async def test_batcher_batches_across_senders(shm_client: TritonClient) -> None:
    stats_before = (await shm_client.statistics("frame_stats"))["model_stats"][0]
    batcher = ModelBatcher(shm_client, "frame_stats", max_batch=8, max_delay=0.02, timeout=10)
    frames = _frames()
    senders = 16

    async def sender(index: int) -> np.ndarray:
        out = await batcher.infer({"IMAGE": frames[index % len(frames)]})
        return out["MEAN_RGB"]

    try:
        results = await asyncio.gather(*(sender(i) for i in range(senders)))
    finally:
        await batcher.close()
    for index, mean in enumerate(results):
        np.testing.assert_allclose(mean, frames[index % len(frames)].mean(axis=(0, 1)), atol=1e-3)
    assert max(batcher.stats.sizes) > 1
    # Triton updates its statistics just after it answers: wait until all inferences show.
    for _ in range(50):
        stats_after = (await shm_client.statistics("frame_stats"))["model_stats"][0]
        inferences = int(stats_after["inference_count"]) - int(stats_before.get("inference_count", 0))
        executions = int(stats_after["execution_count"]) - int(stats_before.get("execution_count", 0))
        if inferences >= senders:
            break
        await asyncio.sleep(0.1)
    assert inferences == senders
    assert executions < senders  # Triton ran batches larger than one


async def test_unknown_model_is_typed(plain_client: TritonClient) -> None:
    with pytest.raises(InferenceError) as caught:
        await plain_client.infer("no_such_model", {"IMAGE": _frames()[:1]})
    assert caught.value.code == 47102


async def test_triton_down_then_back(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    server = await _start(repo)
    port = server.grpc_port  # where it came back: a restart at one address
    client = TritonClient(server.grpc_url, shared_memory=True, pool_bytes=64 << 20, timeout=2)
    batcher = ModelBatcher(client, "frame_stats", timeout=2)
    frame = _frames()[0]
    try:
        await batcher.infer({"IMAGE": frame})
        await server.stop()
        started = time.monotonic()
        with pytest.raises(InferenceError) as caught:
            await batcher.infer({"IMAGE": frame})
        # Within the client's 2 s deadline, never a hang: 2 s more of slack for a loaded machine.
        assert time.monotonic() - started < 2 + 2
        assert caught.value.code in (47101, 47007)
        server = await _start(repo, port)  # same address: the client must recover by itself
        out = await batcher.infer({"IMAGE": frame})
        np.testing.assert_allclose(out["MEAN_RGB"], frame.mean(axis=(0, 1)), atol=1e-3)
    finally:
        await batcher.close()
        await client.close()
        await server.stop()
