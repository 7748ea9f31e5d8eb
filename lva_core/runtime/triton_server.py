"""A local tritonserver, run from the ``nvidia-pytriton`` wheel as a child process.

The wheel ships a real ``tritonserver`` with the Python backend, but it does not run as is: the
backend stub for our Python version must be copied next to the backend, the wheel's shared
libraries and Python's own ``libpython`` must be on ``LD_LIBRARY_PATH``, and the stub runs the
first ``python3`` on ``PATH``, which must be the Triton environment's (it needs numpy<2; with
numpy 2 inputs silently read as zeros). This module hides all of that behind ``LocalTriton``.

A stub that is killed leaves its shared-memory region in ``/dev/shm`` behind; tmpfs is RAM, so
``triton_shm.cleanup_stale_shm`` removes regions that no live process maps.

Run as a program it starts the server, prints ``READY <grpc url>`` and stops on SIGTERM/SIGINT:
test fixtures use it when they need a Triton they can kill.

Why one file of over 400 lines: ``LocalTriton`` is one process's lifecycle (probe the
environment, install the stub, start, wait for ready, explain a failure from the log, stop and
reap the stubs) plus its command line; split, that one state would be shared across modules.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import tritonclient.grpc.aio as grpcclient

from lva_common.aio import wait_within
from lva_common.errors import TRITON_UNAVAILABLE, LunaError
from lva_common.signals import stop_event
from lva_core.runtime import procfs
from lva_core.runtime.triton_shm import cleanup_stale_shm, shm_regions_of

log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 300
# Triton's glog error lines ("E1124 10:41:42.538911 ..."): they name the model that failed to load.
_ERROR_LINE = re.compile(r"^E\d{4} ")
# Printed by every CPU-only start; it is not why a start failed.
_CPU_NOISE = ("CudaDriverHelper has not been initialized",)


# Run by the Triton environment's python in the child, then replaced by tritonserver (same pid).
_DEATH_SIGNAL_LAUNCHER = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_DEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(f"parent {sys.argv[1]} died before tritonserver started")
os.execv(sys.argv[2], sys.argv[2:])
"""


def _with_death_signal(python: Path, args: list[str]) -> list[str]:
    """``args`` behind a launcher that makes the server get SIGTERM when its parent dies (Linux).

    Without it a crashed or SIGKILLed agent leaves an orphaned tritonserver holding the ports.
    SIGTERM rather than SIGKILL so that Triton still unloads its models and frees the stubs' shm.
    The prctl runs in a launcher that execs the server, not in a ``preexec_fn``: a preexec_fn
    forces a plain fork of this multi-threaded process (gRPC's threads), where running Python
    before exec may deadlock. Linux signals when the *thread* that spawned the child exits, so
    start the server from a thread that lives as long as the process (the event loop's).
    """
    if not sys.platform.startswith("linux"):
        return args
    # -I -S: no site, no environment variables: the launcher starts in a few milliseconds.
    return [str(python), "-I", "-S", "-c", _DEATH_SIGNAL_LAUNCHER, str(os.getpid()), *args]


# A stub's arguments: its binary, model.py, its shm region, two sizes, then its server's pid.
_STUB_BINARY = "triton_python_backend_stub"
_STUB_PARENT_ARG = 5


def backend_stubs_of(server_pid: int) -> dict[int, str]:
    """The Python backend stubs that server ``server_pid`` started, alive, even re-parented."""
    parent = str(server_pid)

    def is_stub(args: list[str]) -> bool:
        return (
            len(args) > _STUB_PARENT_ARG
            and args[0].endswith(_STUB_BINARY)
            and args[_STUB_PARENT_ARG] == parent
        )

    return procfs.started_with(is_stub)


class LocalTriton:
    """Start and stop a tritonserver from the Triton environment (``make triton-env``)."""

    def __init__(
        self,
        *,
        env_dir: Path,
        model_repository: Path,
        grpc_port: int = 8001,
        http_port: int = 8000,
        metrics_port: int = 8002,
        model_control_mode: str = "explicit",
        log_path: Path | None = None,
        startup_timeout: float = 60.0,
        extra_args: list[str] | None = None,
    ) -> None:
        self.env_dir = Path(env_dir).absolute()
        self.model_repository = Path(model_repository).absolute()
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.model_control_mode = model_control_mode
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args or [])
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None
        self._log_lines: deque[str] = deque(maxlen=_LOG_TAIL_LINES)
        self._log_offset = 0
        self._drain_task: asyncio.Task[None] | None = None
        # Backend stubs (pid -> start time) and shm regions of the running server, for stop().
        self._stubs: dict[int, str] = {}
        self._regions: set[Path] = set()

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Launch tritonserver and wait until it reports ready; LunaError 47101 if it does not."""
        if self.running:
            return
        if self._proc is not None:
            # The previous server died on its own: reap it and its leftovers before a new one.
            await self.stop()
        python = self.env_dir / "bin" / "python"
        if not python.exists():
            raise LunaError(
                TRITON_UNAVAILABLE,
                f"Triton environment {self.env_dir} not found (no {python}): run `make triton-env`",
            )
        if not self.model_repository.is_dir():
            raise LunaError(TRITON_UNAVAILABLE, f"Triton model repository {self.model_repository} not found")
        version, libdir, site_packages = await self._probe_env(python)
        server_dir = Path(site_packages) / "pytriton" / "tritonserver"
        binary = server_dir / "bin" / "tritonserver"
        if not binary.exists():
            raise LunaError(
                TRITON_UNAVAILABLE,
                f"{binary} not found: nvidia-pytriton is missing from {self.env_dir}; run `make triton-env`",
            )
        self._install_stub(server_dir, version)
        cleanup_stale_shm()

        env = dict(os.environ)
        # The stub must import the Triton environment's numpy (<2), never the caller's.
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        env["VIRTUAL_ENV"] = str(self.env_dir)
        env["PATH"] = os.pathsep.join([str(self.env_dir / "bin"), env.get("PATH", os.defpath)])
        lib_path = [str(Path(site_packages) / "nvidia_pytriton.libs"), libdir]
        if env.get("LD_LIBRARY_PATH"):
            lib_path.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_path)

        args = [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={server_dir / 'backends'}",
            f"--model-control-mode={self.model_control_mode}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
        ]
        if self.model_control_mode == "explicit" and not any(
            arg.startswith("--load-model") for arg in self.extra_args
        ):
            # Explicit mode loads nothing at start unless told; "*" loads the whole repository.
            args.append("--load-model=*")
        args.extend(self.extra_args)

        self._log_lines.clear()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            # A file rather than a pipe: the server must never block on a full pipe when the
            # event loop is busy.
            self._log_file = self.log_path.open("ab")
            # The file may hold earlier runs: the failure summary reads only this run's part.
            self._log_offset = self._log_file.tell()
            output: int | IO[bytes] = self._log_file
        else:
            output = asyncio.subprocess.PIPE
        log.info("starting tritonserver: %s", " ".join(args))
        self._proc = await asyncio.create_subprocess_exec(
            *_with_death_signal(python, args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        if self._proc.stdout is not None:
            self._drain_task = asyncio.create_task(self._drain(self._proc.stdout))
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        # Known now in case the server dies on its own: stop() can still remove what it leaves.
        self._remember_tree(self._proc.pid)
        log.info("tritonserver %d ready at %s", self._proc.pid, self.grpc_url)

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; then remove the shm it left."""
        proc = self._proc
        if proc is None:
            return
        died_alone = proc.returncode is not None
        if not died_alone:
            # Learn the stubs and regions while they are still visible as ours: once the server
            # has exited, its stubs are re-parented and its regions belong to no one.
            self._remember_tree(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await wait_within(proc.wait(), timeout)
            except TimeoutError:
                log.warning("tritonserver %d still running %gs after SIGTERM: killing it", proc.pid, timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        # Stubs started after the last look at the tree (a model still loading when the server
        # was told to stop, or when Ctrl-C reached the server first) were re-parented when it
        # exited: they name their server's pid among their arguments.
        self._stubs.update(backend_stubs_of(proc.pid))
        self._regions.update(shm_regions_of(list(self._stubs)))
        await self._reap_stubs()
        if self._drain_task is not None:
            # The pipe closes when the server and its stubs are gone; the drain then ends.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await wait_within(self._drain_task, 2.0)
            self._drain_task = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        cleanup_stale_shm(min_age=0.0, paths=self._regions)
        if died_alone:
            # Models loaded after start may have made regions we never saw: sweep the old ones.
            cleanup_stale_shm()
        self._stubs.clear()
        self._regions.clear()
        self._proc = None

    def _remember_tree(self, pid: int) -> None:
        # Triton's Python backend stubs are the server's only children.
        self._stubs.update(procfs.children(pid))
        self._regions.update(shm_regions_of([pid, *self._stubs]))

    async def _reap_stubs(self, grace: float = 3.0) -> None:
        # A stub notices a dead server by polling, and while it lives it keeps its region
        # mapped; after SIGKILL of the server it may linger, so it is waited for, then killed.
        deadline = time.monotonic() + grace
        alive = {pid: ident for pid, ident in self._stubs.items() if procfs.running(pid, ident)}
        while alive and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            alive = {pid: ident for pid, ident in alive.items() if procfs.running(pid, ident)}
        for pid in alive:
            log.warning("Triton backend stub %d outlived its server: killing it", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        while alive and time.monotonic() < deadline + 1.0:
            await asyncio.sleep(0.05)
            alive = {pid: ident for pid, ident in alive.items() if procfs.running(pid, ident)}

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server wrote (from the log file when there is one)."""
        return "\n".join(self._recent_log_lines()[-lines:])

    def _recent_log_lines(self) -> list[str]:
        if self.log_path is None:
            return list(self._log_lines)
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(self._log_offset, f.tell() - 65536))
                return f.read().decode(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        except OSError:
            return []

    def _failure_summary(self) -> str:
        """The error lines and the last plain lines of the log, without Triton's wide tables.

        The cause of a failed start (a model that does not load) is logged well before the
        last lines, which are the shutdown that follows it.
        """
        lines = [line[:500] for line in self._recent_log_lines() if line.strip()]
        errors = [
            line for line in lines if _ERROR_LINE.match(line) and not any(n in line for n in _CPU_NOISE)
        ]
        tail = [line for line in lines if not line.startswith(("|", "+")) and line not in errors][-8:]
        parts = []
        if errors:
            parts.append("errors:\n" + "\n".join(errors[-5:]))
        parts.append("last log lines:\n" + ("\n".join(tail) if tail else "(none)"))
        return "\n".join(parts)

    async def _probe_env(self, python: Path) -> tuple[str, str, str]:
        code = (
            "import sys, sysconfig; "
            'print(f"{sys.version_info[0]}.{sys.version_info[1]}"); '
            'print(sysconfig.get_config_var("LIBDIR")); '
            'print(sysconfig.get_path("purelib"))'
        )
        proc = await asyncio.create_subprocess_exec(
            str(python), "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        lines = out.decode().split()
        if proc.returncode != 0 or len(lines) != 3:
            raise LunaError(
                TRITON_UNAVAILABLE,
                f"{python} does not run ({err.decode(errors='replace').strip()}): run `make triton-env`",
            )
        return lines[0], lines[1], lines[2]

    def _install_stub(self, server_dir: Path, version: str) -> None:
        target = server_dir / "backends" / "python" / "triton_python_backend_stub"
        if target.exists():
            return
        source = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not source.exists():
            raise LunaError(
                TRITON_UNAVAILABLE, f"the Triton wheel has no Python backend stub for Python {version}"
            )
        # Copy then rename: two servers starting at once must never see a half-written stub.
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copy2(source, tmp)
        os.replace(tmp, target)

    async def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.startup_timeout
        client = grpcclient.InferenceServerClient(self.grpc_url)
        exited = asyncio.create_task(proc.wait())
        try:
            while True:
                if exited.done():
                    raise LunaError(
                        TRITON_UNAVAILABLE,
                        f"tritonserver exited with code {proc.returncode} while starting; "
                        f"{await self._settled_failure_summary()}",
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LunaError(
                        TRITON_UNAVAILABLE,
                        f"tritonserver was not ready within {self.startup_timeout:g}s; "
                        f"{await self._settled_failure_summary()}",
                    )
                attempt = min(1.0, remaining)
                try:
                    if await wait_within(client.is_server_ready(client_timeout=attempt), attempt + 0.5):
                        return
                except Exception:
                    # Before the port listens every probe fails; only exit or deadline end the wait.
                    pass
                # Wakes at once when the process dies instead of probing a dead port again.
                await asyncio.wait({exited}, timeout=0.1)
        finally:
            exited.cancel()
            with contextlib.suppress(Exception):
                await wait_within(client.close(), 2.0)

    async def _settled_failure_summary(self) -> str:
        # The drain task may still hold the last lines the dying server wrote.
        if self._drain_task is not None and self._proc is not None and self._proc.returncode is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await wait_within(asyncio.shield(self._drain_task), 1.0)
        return self._failure_summary()

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            self._log_lines.append(text)
            log.debug("tritonserver: %s", text)


async def _serve(args: argparse.Namespace) -> int:
    triton = LocalTriton(
        env_dir=args.env,
        model_repository=args.repo,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        model_control_mode=args.model_control_mode,
        log_path=args.log,
        startup_timeout=args.startup_timeout,
    )
    stopping = stop_event()
    start = asyncio.create_task(triton.start())
    stop_wait = asyncio.create_task(stopping.wait())
    await asyncio.wait({start, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if not start.done():
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await start
        await triton.stop()
        return 0
    if (error := start.exception()) is not None:
        print(error, file=sys.stderr, flush=True)
        return 1
    print(f"READY {triton.grpc_url}", flush=True)
    try:
        await stop_wait
    finally:
        await triton.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lva_core.runtime.triton_server",
        description="Run a local tritonserver until SIGTERM/SIGINT.",
    )
    parser.add_argument("--env", type=Path, default=Path(".venv-triton"), help="the Triton environment")
    parser.add_argument("--repo", type=Path, default=Path("triton_models"), help="the model repository")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-control-mode", default="explicit", choices=["none", "poll", "explicit"])
    parser.add_argument("--log", type=Path, default=None, help="server log file (default: stderr tail)")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    parser.add_argument("-v", "--verbose", action="store_true", help="copy the server's output to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
