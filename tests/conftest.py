"""Session fixtures: one real Triton, core and facade per test session, started as processes.

They are started only when a test asks for one (``pytest -m "not e2e"`` never does). The ``e2e``
marker goes on every test under the folders whose tests start real services, and on any other
test that uses one of the session's services, so that the marker never depends on someone
remembering to write it. tests/unit/ starts no service process: a test there that asks for one
of the session's services is refused at collection, rather than marked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from lva_testkit.ports import refused_port
from lva_testkit.postgres import PostgresCluster, new_cluster
from lva_testkit.stack import Service, start_core, start_facade, start_triton

TESTS = Path(__file__).resolve().parent
PLUGIN_SITE = TESTS / "fixtures" / "plugin_site"
# Folders whose every test starts Triton, a core or a facade (or the whole stack) as processes.
E2E_FOLDERS = ("e2e", "triton", "models", "reliability", "bench")
# The session's services: a test that uses any of them is end to end wherever it lives.
SERVICE_FIXTURES = {"triton", "core", "facade", "postgres"}

SECRET_TOKEN = "s3cr3t-token-value"
CAMERA_URL = "rtsp://admin:hunter2@127.0.0.1:8554/cam"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    e2e_dirs = [TESTS / name for name in E2E_FOLDERS]
    for item in items:
        services = SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
        if services and item.path.is_relative_to(TESTS / "unit"):
            raise pytest.UsageError(f"{item.nodeid} uses {sorted(services)}: not a unit test")
        in_e2e_dir = any(item.path.is_relative_to(folder) for folder in e2e_dirs)
        if (in_e2e_dir or services) and item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def secret_token() -> str:
    """The facade's bearer token in the session's stack: no answer or log may show it."""
    return SECRET_TOKEN


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One throw-away PostgreSQL cluster for the session; each test takes a database of its own."""
    cluster = new_cluster()
    cluster.start()
    yield cluster
    cluster.stop()


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


@pytest.fixture
def nothing_listens() -> Iterator[int]:
    """A loopback port where connections are refused for the whole test (held, not just picked)."""
    with refused_port() as port:
        yield port
