"""The real services as processes on free loopback ports, each with its log: the one launcher.

The end-to-end tests, the benchmarks and the reliability suite all measure the services as they
are deployed (separate processes talking gRPC and WebSocket), so all of them start them here.
Triton is started through the core's own launcher CLI (``python -m
lva_core.runtime.triton_server``), which prints ``READY`` once it serves. ``make run`` has a
launcher of its own in the product (lva_core/runtime/stack.py): it runs the configured stack in
the foreground, not on free ports with logs in a folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from lva_core.runtime import procfs
from lva_testkit.paths import DOCS_HTML, MODEL_REPOSITORY, PYTHON, REPO, TRITON_ENV
from lva_testkit.ports import free_port, port_open


@dataclass
class Service:
    """A started process with its log file; stop() is idempotent."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int
    _log: IO[bytes] | None = field(default=None, repr=False)
    metrics_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
        return int(self.proc.returncode)

    def wait_port(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            if port_open(self.port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not open port {self.port}:\n{self.log_text()[-3000:]}")


def _spawn(
    name: str, args: list[str], log_dir: Path, port: int, env: dict[str, str] | None = None
) -> Service:
    log_path = log_dir / f"{name}-{port}.log"
    log = log_path.open("wb")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    return Service(name, proc, log_path, port, log)


def start_triton(log_dir: Path, grpc_port: int | None = None, timeout: float = 60) -> Service:
    """A real tritonserver from the wheel, through the core's own launcher CLI."""
    port = grpc_port or free_port()
    service = _spawn(
        "triton",
        [
            PYTHON,
            "-m",
            "lva_core.runtime.triton_server",
            "--env",
            str(TRITON_ENV),
            "--repo",
            str(MODEL_REPOSITORY),
            "--grpc-port",
            str(port),
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
        ],
        log_dir,
        port,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "READY" in service.log_text():
            return service
        if service.proc.poll() is not None:
            break
        time.sleep(0.2)
    text = service.log_text()
    service.stop()
    raise RuntimeError(f"Triton did not become ready:\n{text[-3000:]}")


def core_env(triton_url: str, port: int, **extra: str) -> dict[str, str]:
    return {
        "LVA_CORE__PORT": str(port),
        "LVA_TRITON__MODE": "external",
        "LVA_TRITON__URL": triton_url,
        **extra,
    }


def _names_store(env: dict[str, str]) -> bool:
    """Whether ``env`` sets streams.store_path, itself or in the config file it names."""
    if "LVA_STREAMS__STORE_PATH" in env:
        return True
    if "LVA_CONFIG" not in env:
        return False
    loaded = yaml.safe_load(Path(env["LVA_CONFIG"]).read_text()) or {}
    return "store_path" in (loaded.get("streams") or {})


def start_core(
    log_dir: Path,
    triton_url: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    metrics_port: int | None = None,
) -> Service:
    """A core (on free ports unless given). Local video files may come from the directory above ``log_dir``:
    pytest's base temporary directory, where the tests write their clips
    (``streams.allowed_file_dirs``; ``env`` may set it otherwise)."""
    # Given ports: a restarted core comes back where it was, as the facade expects it.
    port, metrics_port = port or free_port(), metrics_port or free_port()
    files = {"LVA_STREAMS__ALLOWED_FILE_DIRS": json.dumps([str(log_dir.resolve().parent)])}
    # A store of its own per core (and per port: a core restarted on its port finds its streams),
    # never the repository's var/streams.sqlite3, unless ``env`` or its config file names one.
    if not _names_store(env or {}):
        files["LVA_STREAMS__STORE_PATH"] = str(log_dir / f"streams-{port}.sqlite3")
    extra = {"LVA_CORE__METRICS_PORT": str(metrics_port), **files, **(env or {})}
    full_env = core_env(triton_url, port, **extra)
    service = _spawn("core", [PYTHON, "-m", "lva_core"], log_dir, port, full_env)
    service.metrics_port = metrics_port
    service.wait_port(30)
    return service


def start_facade(log_dir: Path, core_address: str, env: dict[str, str] | None = None) -> Service:
    port = free_port()
    facade_env = {
        "LVA_FACADE__PORT": str(port),
        "LVA_FACADE__CORE_ADDRESS": core_address,
        "LVA_FACADE__DOCS_DIR": str(DOCS_HTML),
        **(env or {}),
    }
    service = _spawn("facade", [PYTHON, "-m", "lva_facade"], log_dir, port, facade_env)
    service.wait_port(30)
    return service


@dataclass
class Stack:
    """Triton, a core on it and a facade on the core: what a benchmark or a fault run drives."""

    triton: Service
    core: Service
    facade: Service
    log_dir: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.facade.address}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.facade.address}/1/ws"

    @property
    def core_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.core.metrics_port}/metrics"

    def services(self) -> dict[str, Service]:
        return {"core": self.core, "facade": self.facade, "triton": self.triton}

    def rss_kib(self) -> dict[str, int]:
        """Resident memory of each service's process tree (Triton: server and backend stubs)."""
        return {name: procfs.tree_rss_kib(s.proc.pid) for name, s in self.services().items()}

    def cpu_seconds(self) -> dict[str, float]:
        return {name: procfs.tree_cpu_seconds(s.proc.pid) for name, s in self.services().items()}

    def stop(self) -> None:
        for service in (self.facade, self.core, self.triton):
            service.stop(signal.SIGTERM)


def start_stack(
    log_dir: Path,
    core_settings: dict[str, str] | None = None,
    facade_settings: dict[str, str] | None = None,
    triton_timeout: float = 60,
) -> Stack:
    """The three services, each started once the one it depends on serves; none left on failure.

    ``core_settings`` and ``facade_settings`` are ``LVA_*`` environment variables of each.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    started: list[Service] = []
    try:
        triton = start_triton(log_dir, None, triton_timeout)
        started.append(triton)
        core = start_core(log_dir, triton.address, core_settings)
        started.append(core)
        facade = start_facade(log_dir, core.address, facade_settings)
    except BaseException:
        for service in reversed(started):
            service.stop()
        raise
    return Stack(triton, core, facade, log_dir)
