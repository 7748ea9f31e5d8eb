"""A LocalTriton (the core's own Triton launcher, in-process) on free ports, for tests of Triton.

Tests of the inference client, of the models and of model control run their own tritonserver
on a repository of their own, and drive it through :class:`LocalTriton` itself (start, stop,
kill) rather than through a separate process as :mod:`lva_testkit.stack` does.

Triton's three ports are picked before it starts (it cannot report a port 0 it bound), so every
start checks that the server holds them itself and starts again on fresh ports when another
process took one first (:mod:`lva_testkit.ports`).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from lva_common.errors import TRITON_UNAVAILABLE, LunaError
from lva_core.runtime import procfs
from lva_core.runtime.triton_server import LocalTriton
from lva_testkit.paths import MODEL_REPOSITORY, TRITON_ENV
from lva_testkit.ports import address_in_use, free_ports, listening_ports

_ATTEMPTS = 3


class KitTriton(LocalTriton):
    """A LocalTriton that starts again on fresh ports when another process took one of its own.

    The gRPC port moves only at the first start, and only when it was not given: a restart comes
    back at the address its clients know. The HTTP and metrics ports, which nobody here dials,
    may move at any start.
    """

    # Cleared at the first start (local_triton clears it at once for a given gRPC port).
    may_move = True

    async def start(self) -> None:
        grpc_may_move, self.may_move = self.may_move, False
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                await super().start()
            except LunaError as exc:
                if attempt == _ATTEMPTS or not address_in_use(exc.detail):
                    raise
            else:
                if await self._holds_ports():
                    return
                await self.stop()
                if attempt == _ATTEMPTS:
                    raise LunaError(
                        TRITON_UNAVAILABLE, f"tritonserver does not hold its ports: {sorted(self._ports())}"
                    )
            fresh = free_ports(3)
            if grpc_may_move:
                self.grpc_port = fresh[0]
            self.http_port, self.metrics_port = fresh[1], fresh[2]

    def _ports(self) -> set[int]:
        return {self.grpc_port, self.http_port, self.metrics_port}

    async def _holds_ports(self, timeout: float = 10.0) -> bool:
        """Whether the server's own processes listen on its three ports (within ``timeout``):
        its readiness probe is answered by whoever holds the gRPC port, and Triton may fail on
        its HTTP or metrics port after it reports ready."""
        deadline = time.monotonic() + timeout
        while self.running and self.pid is not None:
            if self._ports() <= listening_ports(procfs.tree(self.pid)):
                return True
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        return False


def local_triton(
    model_repository: Path,
    *,
    grpc_port: int | None = None,
    model_control_mode: str = "explicit",
    startup_timeout: float = 60.0,
    extra_args: list[str] | None = None,
    log_path: Path | None = None,
) -> KitTriton:
    """A LocalTriton, not started, on free ports (``grpc_port`` if given: a restart at one address)."""
    free_grpc, http_port, metrics_port = free_ports(3)
    server = KitTriton(
        env_dir=TRITON_ENV,
        model_repository=model_repository,
        grpc_port=grpc_port or free_grpc,
        http_port=http_port,
        metrics_port=metrics_port,
        model_control_mode=model_control_mode,
        startup_timeout=startup_timeout,
        extra_args=extra_args,
        log_path=log_path,
    )
    server.may_move = grpc_port is None
    return server


def copy_models(repository: Path, *names: str) -> Path:
    """A model repository at ``repository`` holding copies of these models of triton_models/.

    A test's own copy: loading, unloading or adding versions there touches no other test's
    models. Weights that triton_models/ lacks are not fetched here (tools/fetch_models.py does).
    """
    repository.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(
            MODEL_REPOSITORY / name, repository / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    return repository
