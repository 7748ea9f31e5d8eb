"""The real services as processes on loopback ports of their own, each with its log: the one launcher.

The end-to-end tests, the benchmarks and the reliability suite all measure the services as they
are deployed (separate processes talking gRPC and WebSocket), so all of them start them here.
Triton is started through the core's own launcher CLI (``python -m
lva_core.runtime.triton_server``), which prints ``READY`` once it serves. ``make run`` has a
launcher of its own in the product (lva_core/runtime/stack.py): it runs the configured stack in
the foreground, not on free ports with logs in a folder.

Ports (see :mod:`lva_testkit.ports`): the core and the facade bind port 0 and the kit reads back
what they got, so no other process can take their ports first; Triton needs its ports named, so
the kit checks that the server it started owns its gRPC port and starts it again on fresh ports
when another process had taken one.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from lva_core.runtime import procfs
from lva_testkit.paths import DOCS_HTML, MODEL_REPOSITORY, PYTHON, REPO, TRITON_ENV
from lva_testkit.ports import address_in_use, free_ports, listening_ports


@dataclass
class Service:
    """A started process with its log file; stop() is idempotent."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int
    _log: IO[bytes] | None = field(default=None, repr=False)
    metrics_port: int = 0
    # A core's stream store: a core restarted with ``store=`` this one finds its streams.
    store_path: Path | None = None

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

    def owns_port(self, port: int) -> bool:
        """Whether this process or one of its children listens on ``port`` itself."""
        return port in listening_ports(procfs.tree(self.proc.pid))

    def wait_port(self, timeout: float) -> None:
        """Wait until the process itself listens on :attr:`port`: a port that another process
        took first is open too, so an open port alone proves nothing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            if self.owns_port(self.port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not open port {self.port}:\n{self.log_text()[-3000:]}")


class AddressInUse(RuntimeError):
    """A service could not bind a port it was given: another process had taken it."""


_LOG_SEQUENCE = itertools.count(1)


def _spawn(
    name: str, args: list[str], log_dir: Path, port: int, env: dict[str, str] | None = None
) -> Service:
    # Named by port where the port is known before the start; a service that binds port 0 gets
    # a number, and its log says where it listens.
    while True:
        tag = str(port) if port else f"auto{next(_LOG_SEQUENCE)}"
        log_path = log_dir / f"{name}-{tag}.log"
        try:
            log = log_path.open("xb" if not port else "wb")
            break
        except FileExistsError:
            continue
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    return Service(name, proc, log_path, port, log)


def start_triton(log_dir: Path, grpc_port: int | None = None, timeout: float = 60) -> Service:
    """A real tritonserver from the wheel, through the core's own launcher CLI.

    Its ports are picked here (Triton cannot report a port 0 it bound), so a start whose port
    another process took is started again on fresh ports, up to three times. A given
    ``grpc_port`` (a restart at one address) is kept; only its HTTP and metrics ports move.
    """
    attempts = 3
    for attempt in range(1, attempts + 1):
        try:
            return _start_triton_once(log_dir, grpc_port, timeout)
        except AddressInUse:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _start_triton_once(log_dir: Path, grpc_port: int | None, timeout: float) -> Service:
    picked = free_ports(3)
    port = grpc_port or picked[0]
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
            str(picked[1]),
            "--metrics-port",
            str(picked[2]),
        ],
        log_dir,
        port,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "READY" in service.log_text():
            # The launcher's readiness probe would also be answered by another server on a port
            # that was taken first, and Triton may fail on its HTTP or metrics port after it
            # reports ready: only all three ports held by its own processes count.
            ports = {port, picked[1], picked[2]}
            held_by = time.monotonic() + 10
            while service.proc.poll() is None and time.monotonic() < held_by:
                if ports <= listening_ports(procfs.tree(service.proc.pid)):
                    return service
                time.sleep(0.1)
            text = service.log_text()
            service.stop()
            raise AddressInUse(f"Triton does not hold its ports {sorted(ports)}:\n{text[-3000:]}")
        if service.proc.poll() is not None:
            break
        time.sleep(0.2)
    text = service.log_text()
    service.stop()
    if address_in_use(text):
        raise AddressInUse(f"Triton could not bind its ports:\n{text[-3000:]}")
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


_CORE_PORT = re.compile(r"core listening on [^\s:]+:(\d+)")
_CORE_METRICS_PORT = re.compile(r"core metrics on http://[^\s:]+:(\d+)/metrics")


def start_core(
    log_dir: Path,
    triton_url: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    metrics_port: int | None = None,
    store: Path | None = None,
    timeout: float = 30,
) -> Service:
    """A core. Local video files may come from the directory above ``log_dir``: pytest's base
    temporary directory, where the tests write their clips (``streams.allowed_file_dirs``;
    ``env`` may set it otherwise).

    Unless ``port`` and ``metrics_port`` are given (a restart at the address a facade expects),
    the core binds port 0 and the kit reads both ports from its log (``core listening on``,
    ``core metrics on``, logged at INFO), so no other process can take them first. Its stream
    store is a file of its own in ``log_dir`` (:attr:`Service.store_path`), never the
    repository's var/streams.sqlite3, unless ``env`` or its config file names one; ``store``
    reuses one, so that a restarted core finds its streams.
    """
    files = {"LVA_STREAMS__ALLOWED_FILE_DIRS": json.dumps([str(log_dir.resolve().parent)])}
    store_path: Path | None = None
    if not _names_store(env or {}):
        store_path = store or log_dir / f"streams-{uuid.uuid4().hex[:12]}.sqlite3"
        files["LVA_STREAMS__STORE_PATH"] = str(store_path)
    # Event images in the test's own directory, never the repository's var/images: beside the
    # store (a restart on it finds them again), or one directory per core (a fleet's agents
    # each keep their own, as on separate machines).
    images = store_path.with_suffix(".images") if store_path else log_dir / f"images-{uuid.uuid4().hex[:12]}"
    files["LVA_IMAGES__PATH"] = str(images)
    extra = {"LVA_CORE__METRICS_PORT": str(metrics_port or 0), **files, **(env or {})}
    full_env = core_env(triton_url, port or 0, **extra)
    service = _spawn("core", [PYTHON, "-m", "lva_core"], log_dir, port or 0, full_env)
    service.store_path = store_path
    deadline = time.monotonic() + timeout
    while True:
        text = service.log_text()
        grpc_match, metrics_match = _CORE_PORT.search(text), _CORE_METRICS_PORT.search(text)
        if grpc_match and metrics_match:
            service.port, service.metrics_port = int(grpc_match[1]), int(metrics_match[1])
            break
        if service.proc.poll() is not None or time.monotonic() >= deadline:
            service.stop()
            raise RuntimeError(
                f"core exited with {service.proc.returncode} before it logged its ports:\n{text[-3000:]}"
                if service.proc.returncode is not None
                else f"core logged no ports within {timeout} s:\n{text[-3000:]}"
            )
        time.sleep(0.1)
    service.wait_port(max(1.0, deadline - time.monotonic()))
    return service


def start_facade(log_dir: Path, core_address: str, env: dict[str, str] | None = None) -> Service:
    """A facade on port 0: its only listening socket, read from /proc, is the port it got."""
    facade_env = {
        "LVA_FACADE__PORT": "0",
        "LVA_FACADE__CORE_ADDRESS": core_address,
        "LVA_FACADE__DOCS_DIR": str(DOCS_HTML),
        **(env or {}),
    }
    service = _spawn("facade", [PYTHON, "-m", "lva_facade"], log_dir, 0, facade_env)
    deadline = time.monotonic() + 30
    while not (ports := listening_ports(service.proc.pid)):
        if service.proc.poll() is not None or time.monotonic() >= deadline:
            text = service.log_text()
            service.stop()
            raise RuntimeError(
                f"facade exited with {service.proc.returncode} or never listened:\n{text[-3000:]}"
            )
        time.sleep(0.1)
    if len(ports) != 1:
        service.stop()
        raise RuntimeError(f"facade listens on {sorted(ports)}: which one is its API?")
    [service.port] = ports
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
