"""The deep health check names the component at fault, and only that one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from lva_core.runtime.triton_server import LocalTriton
from lva_testkit.stack import Service, start_core, start_facade
from lva_testkit.streams import assert_luna_error
from lva_testkit.triton import copy_models, local_triton


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("health")


@pytest.fixture(scope="module")
async def triton(stack_dir: Path) -> AsyncIterator[LocalTriton]:
    # Its own explicit-mode Triton: unloading a model here touches no other test's.
    server = local_triton(copy_models(stack_dir / "repo", "frame_stats"), model_control_mode="explicit")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="module")
def facade(stack_dir: Path, triton: LocalTriton) -> Iterator[Service]:
    # Every role on the one model this Triton has: the health check covers the models named here.
    models = (
        "{pipeline_probe: {model: frame_stats}, people_counter: {detector: frame_stats},"
        " human_tracking: {detector: frame_stats, attributes: frame_stats, body_detector: frame_stats},"
        " line_crossing: {detector: frame_stats}}"
    )
    core = start_core(stack_dir, triton.grpc_url, {"LVA_TRITON__MODELS": models})
    try:
        facade = start_facade(stack_dir, core.address)
        try:
            yield facade
        finally:
            facade.stop()
    finally:
        core.stop()


async def _health(http: aiohttp.ClientSession, facade: Service) -> tuple[int, dict[str, object]]:
    async with http.get(
        f"http://{facade.address}/healthcheck", params={"include_luna_services": "1"}
    ) as resp:
        return resp.status, await resp.json() if resp.status != 200 else {}


async def test_an_unloaded_model_is_blamed_alone(http: aiohttp.ClientSession, facade: Service) -> None:
    status, body = await _health(http, facade)
    assert status == 200, body
    async with http.post(f"http://{facade.address}/1/models/frame_stats/unload") as resp:
        assert resp.status == 200, await resp.text()
    try:
        status, body = await _health(http, facade)
        assert status == 502
        assert_luna_error(body, 38001)
        errors = body["errors"]
        assert isinstance(errors, list)
        # Triton itself is live and answering; saying "triton: not ready" as well sent operators
        # to restart a healthy server.
        assert [e["component"] for e in errors] == ["model:frame_stats"], errors
        assert "frame_stats" in str(body["detail"]) and "triton," not in str(body["detail"])
    finally:
        async with http.post(f"http://{facade.address}/1/models/frame_stats/load") as resp:
            assert resp.status == 200, await resp.text()
    status, _ = await _health(http, facade)
    assert status == 200
