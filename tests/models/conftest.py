"""The real networks in a real tritonserver: each module runs one on a repository of its own.

A module's repository holds only the models it tests (copied from triton_models/), so no other
model's state can affect it, with their weights put in place by tools/fetch_models.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from lva_testkit.paths import REPO
from lva_testkit.triton import copy_models


@pytest.fixture(scope="session")
def fetched_repository(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(label, models, timeout=600)``: a new repository of ``models``, weights in place."""

    def make(label: str, models: Sequence[str], timeout: float = 600) -> Path:
        repo = copy_models(tmp_path_factory.mktemp(label), *models)
        # Checks the weights' stamps: a copy from the cache, or a download and conversion on a
        # machine that never did (so the tests run on a fresh clone too).
        fetched = subprocess.run(
            [
                sys.executable,
                str(REPO / "tools" / "fetch_models.py"),
                "--repo",
                str(repo),
                "--only",
                ",".join(models),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert fetched.returncode == 0, f"fetch_models failed:\n{fetched.stdout}\n{fetched.stderr}"
        assert "skipped" not in fetched.stdout, fetched.stdout
        return repo

    return make


@pytest.fixture(scope="session")
def fetched_test_file() -> Callable[[str], None]:
    """``fetch(name)``: make sure a test file of tools/models/testdata.py is in the model cache.

    The same cached fetch as the weights (``make models`` has normally done it already): a
    checksum check, or a download on a machine that never did. Tests read the file from there.
    """

    def fetch(name: str, timeout: float = 300) -> None:
        fetched = subprocess.run(
            [sys.executable, str(REPO / "tools" / "fetch_models.py"), "--only", name],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert fetched.returncode == 0, f"fetch_models failed:\n{fetched.stdout}\n{fetched.stderr}"

    return fetch
