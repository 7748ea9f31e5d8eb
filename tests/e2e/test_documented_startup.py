"""How the services start, as docs/configuration.md, docs/security.md and the README describe it.

- ``make run``'s launcher (``python -m lva_core.runtime.stack``) on the default ``triton.mode:
  local``: the core starts its own Triton, a file stream is analysed on it, and SIGINT stops all
  three processes. Every other test forces ``external``.
- A half-filled TLS section is a configuration error at startup, never a silent plaintext port.
- The facade takes ``facade.auth_token`` from its own environment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml

from lva_core.runtime import procfs
from lva_testkit.clips import clip
from lva_testkit.documented import delete_stream, poll
from lva_testkit.paths import DOCS_HTML, PYTHON, REPO
from lva_testkit.ports import free_ports, port_open
from lva_testkit.stack import Service, core_env, start_facade
from lva_testkit.streams import EVERY_FRAME_COUNTER, assert_luna_error, create, file_stream, wait_status


@dataclass
class LocalStack:
    proc: subprocess.Popen[bytes]
    log_path: Path
    base_url: str
    ports: dict[str, int]
    clips: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _clean_env() -> dict[str, str]:
    # Only the YAML file configures this stack: no LVA_* override of the test's environment.
    return {k: v for k, v in os.environ.items() if not k.startswith("LVA_")} | {"PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("local-stack")
    core, metrics, facade, grpc_port, http_port, triton_metrics = free_ports(6)
    ports = {"core": core, "facade": facade, "triton": grpc_port, "triton_http": http_port}
    settings = {  # no triton.mode: the default, local
        "core": {"port": core, "metrics_port": metrics},
        "facade": {"port": facade, "core_address": f"127.0.0.1:{core}", "docs_dir": str(DOCS_HTML)},
        "triton": {
            "url": f"127.0.0.1:{grpc_port}",
            "http_port": http_port,
            "metrics_port": triton_metrics,
            "log_path": str(root / "triton.log"),
            "startup_timeout": 120.0,
        },
        "streams": {"store_path": str(root / "streams.sqlite3"), "allowed_file_dirs": [str(root)]},
    }
    config = root / "lva.yaml"
    config.write_text(yaml.safe_dump(settings))
    log_path = root / "stack.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", "lva_core.runtime.stack", "--config", str(config)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_clean_env(),
            start_new_session=True,  # its own group: the teardown can end whatever it left
        )
    stack = LocalStack(proc, log_path, f"http://127.0.0.1:{facade}", ports, root)
    try:
        yield stack
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


async def test_the_run_stack_starts_a_local_triton_analyses_on_it_and_stops_on_sigint(
    local_stack: LocalStack, http: aiohttp.ClientSession
) -> None:
    base_url = local_stack.base_url

    async def healthy() -> bool:
        assert local_stack.proc.poll() is None, local_stack.log_text()[-3000:]
        try:
            async with http.get(f"{base_url}/healthcheck", params={"include_luna_services": "1"}) as resp:
                return resp.status == 200
        except aiohttp.ClientConnectionError:
            return False

    # Triton, every configured model included, as the health check covers them.
    await poll(healthy, 240, "the stack's health with include_luna_services=1")
    async with http.get(f"{base_url}/1/config") as resp:
        config = await resp.json()
    assert config["triton"]["mode"] == "local"
    assert port_open(local_stack.ports["triton"])  # the core's own Triton, where triton.url says
    stream_id = await create(
        http, base_url, file_stream(clip(local_stack.clips, seconds=1.0), EVERY_FRAME_COUNTER)
    )
    try:
        stream = await wait_status(http, base_url, stream_id, {"done", "failure"}, 120)
        assert stream["status"] == "done", stream
        assert stream["statistics"]["frames_processed"] == 5  # 25 frames, every fifth analysed
        assert stream["statistics"]["last_error"] is None  # every inference answered
    finally:
        await delete_stream(http, base_url, stream_id)

    processes = procfs.tree(local_stack.proc.pid)
    assert len(processes) >= 4  # the launcher, the core, the facade and tritonserver at least
    local_stack.proc.send_signal(signal.SIGINT)
    code = await asyncio.to_thread(local_stack.proc.wait, 60)
    assert code == 0, local_stack.log_text()[-3000:]

    # Nothing left behind: every process of the tree is gone and every port is closed.
    async def all_gone() -> bool:
        return all(procfs.gone(pid) for pid in processes)

    await poll(all_gone, 30, "processes of the stopped stack")
    assert not any(port_open(port) for port in local_stack.ports.values())


def _start_and_wait_exit(env: dict[str, str], module: str, timeout: float = 60) -> tuple[int, str]:
    """Run a service until it exits on its own; its exit status and its output."""
    done = subprocess.run(
        [PYTHON, "-m", module], cwd=REPO, env=_clean_env() | env, capture_output=True, timeout=timeout
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The checks refuse the section before any file is parsed, so any existing file will do.
    path = tmp_path_factory.mktemp("tls") / "some.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return path


@pytest.mark.parametrize(
    ("half", "message"),
    [
        ({"LVA_CORE__TLS__CERT_FILE": "{pem}"}, "core.tls needs both cert_file and key_file"),
        ({"LVA_CORE__TLS__KEY_FILE": "{pem}"}, "core.tls needs both cert_file and key_file"),
        ({"LVA_CORE__TLS__CLIENT_CA_FILE": "{pem}"}, "core.tls needs both cert_file and key_file"),
    ],
)
def test_a_core_with_half_a_tls_section_refuses_to_start(
    triton: Service, pem: Path, half: dict[str, str], message: str
) -> None:
    core_port = free_ports(1)[0]
    env = core_env(triton.address, core_port, **{k: v.format(pem=pem) for k, v in half.items()})
    env["LVA_STREAMS__STORE_PATH"] = ""
    code, output = _start_and_wait_exit(env, "lva_core")
    assert code != 0
    assert message in output, output[-3000:]
    assert not port_open(core_port)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"LVA_DECODER__HWACCEL": "vaapi"}, "decoder.hwaccel must be one of auto, cuda, none, not 'vaapi'"),
        ({"LVA_DELIVERY__BATCH": "0"}, "delivery.max_pending and delivery.batch must be at least 1"),
        ({"LVA_DELIVERY__MAX_BACKOFF": "0"}, "delivery.max_age, backoffs and scan_interval must be positive"),
    ],
)
def test_a_core_with_a_setting_it_cannot_use_says_so_in_one_line(
    triton: Service, setting: dict[str, str], message: str
) -> None:
    core_port = free_ports(1)[0]
    env = core_env(triton.address, core_port, **setting)
    env["LVA_STREAMS__STORE_PATH"] = ""
    code, output = _start_and_wait_exit(env, "lva_core")
    assert code == 1, output[-3000:]
    assert message in output and "Traceback" not in output, output[-3000:]
    assert not port_open(core_port)


def test_a_facade_with_a_list_of_core_names_refuses_to_start() -> None:
    # A list balances over IP addresses only; names go through dns:/// (docs/configuration.md).
    facade_port, core_port = free_ports(2)
    env = {
        "LVA_FACADE__PORT": str(facade_port),
        "LVA_FACADE__CORE_ADDRESS": f"core-a:{core_port},127.0.0.1:{core_port}",
    }
    code, output = _start_and_wait_exit(env, "lva_facade")
    assert code == 1
    assert "'core-a:" in output and "must be an IP address and port" in output, output[-3000:]
    assert "Traceback" not in output
    assert not port_open(facade_port)


@pytest.mark.parametrize(
    ("half", "message"),
    [
        (
            {"LVA_FACADE__CORE_TLS__CERT_FILE": "{pem}", "LVA_FACADE__CORE_TLS__KEY_FILE": "{pem}"},
            "facade.core_tls needs ca_file",
        ),
        (
            {"LVA_FACADE__CORE_TLS__CA_FILE": "{pem}", "LVA_FACADE__CORE_TLS__CERT_FILE": "{pem}"},
            "facade.core_tls needs both cert_file and key_file, or neither",
        ),
    ],
)
def test_a_facade_with_half_a_tls_section_refuses_to_start(
    pem: Path, half: dict[str, str], message: str
) -> None:
    facade_port, core_port = free_ports(2)
    env = {
        "LVA_FACADE__PORT": str(facade_port),
        "LVA_FACADE__CORE_ADDRESS": f"127.0.0.1:{core_port}",
        **{k: v.format(pem=pem) for k, v in half.items()},
    }
    code, output = _start_and_wait_exit(env, "lva_facade")
    assert code != 0
    assert message in output, output[-3000:]
    assert not port_open(facade_port)


@pytest.fixture
def env_token_facade(log_dir: Path, core: Service) -> Iterator[Service]:
    # The session's core has a token in its environment too (SECRET_TOKEN): not this facade's.
    facade = start_facade(log_dir, core.address, {"LVA_FACADE__AUTH_TOKEN": "from-the-facade-env"})
    try:
        yield facade
    finally:
        facade.stop()


async def test_the_facade_takes_its_token_from_its_own_environment(
    env_token_facade: Service, http: aiohttp.ClientSession, secret_token: str
) -> None:
    url = f"http://{env_token_facade.address}/1/streams"
    async with http.get(url) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="lva"'
        assert_luna_error(await resp.json(), 47010)
    # The core's environment names another token: the facade does not take it from there.
    async with http.get(url, headers={"Authorization": f"Bearer {secret_token}"}) as resp:
        assert resp.status == 401
    async with http.get(url, headers={"Authorization": "Bearer from-the-facade-env"}) as resp:
        assert resp.status == 200, await resp.text()
    async with http.get(f"http://{env_token_facade.address}/version") as resp:
        assert resp.status == 200  # an open route stays open
