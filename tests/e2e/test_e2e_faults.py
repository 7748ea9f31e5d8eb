"""Dead dependencies: Triton down (502, then 200 once it returns) and the core down (503)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from lva_testkit.stack import Service, start_core, start_facade, start_triton
from lva_testkit.streams import assert_luna_error


@pytest.fixture
def own_stack(log_dir: Path) -> Iterator[dict[str, Service]]:
    """A Triton of this test's own, so that killing it leaves the session's stack alone."""
    triton = start_triton(log_dir)
    core = start_core(log_dir, triton.address, {"LVA_CORE__HEALTH_TIMEOUT": "2"})
    facade = start_facade(log_dir, core.address)
    services = {"triton": triton, "core": core, "facade": facade}
    yield services
    for service in (facade, core, services["triton"]):
        service.stop()


async def _health(http: aiohttp.ClientSession, facade: Service) -> tuple[int, dict[str, object]]:
    async with http.get(
        f"http://{facade.address}/healthcheck", params={"include_luna_services": "1"}
    ) as resp:
        return resp.status, await resp.json()


async def test_triton_down_is_502_and_recovers(
    http: aiohttp.ClientSession, own_stack: dict[str, Service], log_dir: Path
) -> None:
    facade = own_stack["facade"]
    status, body = await _health(http, facade)
    assert status == 200, body

    grpc_port = own_stack["triton"].port
    own_stack["triton"].stop()
    started = time.monotonic()
    status, body = await _health(http, facade)
    assert time.monotonic() - started < 5  # bounded by the health timeout, never hangs
    assert status == 502
    assert_luna_error(body, 38001)
    errors = body["errors"]
    assert isinstance(errors, list)
    assert errors[0]["component"] == "triton" and errors[0]["error"]
    # The agent itself is still healthy without its dependent services.
    async with http.get(
        f"http://{facade.address}/healthcheck", params={"include_luna_services": "0"}
    ) as resp:
        assert resp.status == 200

    own_stack["triton"] = start_triton(log_dir, grpc_port=grpc_port)
    deadline = time.monotonic() + 20
    while (status := (await _health(http, facade))[0]) != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert status == 200


async def test_core_down_is_503_and_health_502(
    http: aiohttp.ClientSession, log_dir: Path, nothing_listens: int
) -> None:
    facade = start_facade(log_dir, f"127.0.0.1:{nothing_listens}")  # nothing listens there
    try:
        async with http.get(f"http://{facade.address}/version") as resp:
            assert resp.status == 503
            assert_luna_error(await resp.json(), 47006)
        status, body = await _health(http, facade)
        assert status == 502
        assert_luna_error(body, 38001)
        assert body["errors"] == [
            {"component": "lva_core", "status": "unavailable", "error": body["errors"][0]["error"]}  # type: ignore[index]
        ]
        # The facade's own routes keep working without the core.
        async with http.get(
            f"http://{facade.address}/docs/spec", headers={"Accept": "application/x-yaml"}
        ) as resp:
            assert resp.status == 200
    finally:
        facade.stop()
