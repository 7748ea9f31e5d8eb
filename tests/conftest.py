"""Shared fixtures: one real Triton, core and facade per test session, started as processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import REPO, Service, start_core, start_facade, start_triton

SECRET_TOKEN = "s3cr3t-token-value"
CAMERA_URL = "rtsp://admin:hunter2@127.0.0.1:8554/cam"
PLUGIN_SITE = REPO / "tests" / "fixtures" / "plugin_site"


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def triton(log_dir: Path) -> Iterator[Service]:
    service = start_triton(log_dir)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def core(log_dir: Path, triton: Service) -> Iterator[Service]:
    service = start_core(
        log_dir,
        triton.address,
        {
            "LVA_FACADE__AUTH_TOKEN": SECRET_TOKEN,
            "LVA_SOURCES__CAMERA": CAMERA_URL,
            "LVA_PLUGINS__DISABLED": "[disabled_probe]",
            "PYTHONPATH": str(PLUGIN_SITE),
        },
    )
    yield service
    service.stop()


@pytest.fixture(scope="session")
def facade(log_dir: Path, core: Service) -> Iterator[Service]:
    # A short heartbeat, so that the autoping test sees a server ping quickly.
    service = start_facade(log_dir, core.address, {"LVA_FACADE__WS_HEARTBEAT": "1"})
    yield service
    service.stop()


@pytest.fixture
def base_url(facade: Service) -> str:
    return f"http://{facade.address}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
