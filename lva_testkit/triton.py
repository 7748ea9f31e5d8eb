"""A LocalTriton (the core's own Triton launcher, in-process) on free ports, for tests of Triton.

Tests of the inference client, of the models and of model control run their own tritonserver
on a repository of their own, and drive it through :class:`LocalTriton` itself (start, stop,
kill) rather than through a separate process as :mod:`lva_testkit.stack` does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lva_core.runtime.triton_server import LocalTriton
from lva_testkit.paths import MODEL_REPOSITORY, TRITON_ENV
from lva_testkit.ports import free_ports


def local_triton(
    model_repository: Path,
    *,
    grpc_port: int | None = None,
    model_control_mode: str = "explicit",
    startup_timeout: float = 60.0,
    extra_args: list[str] | None = None,
) -> LocalTriton:
    """A LocalTriton, not started, on free ports (``grpc_port`` if given: a restart at one address)."""
    free_grpc, http_port, metrics_port = free_ports(3)
    return LocalTriton(
        env_dir=TRITON_ENV,
        model_repository=model_repository,
        grpc_port=grpc_port or free_grpc,
        http_port=http_port,
        metrics_port=metrics_port,
        model_control_mode=model_control_mode,
        startup_timeout=startup_timeout,
        extra_args=extra_args,
    )


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
