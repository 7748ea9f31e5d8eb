"""The Python backend's shared-memory regions in ``/dev/shm``: finding a server's, and removing
the ones a killed stub left behind (tmpfs is RAM)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from lva_core.runtime import procfs

log = logging.getLogger("lva_core.runtime.triton_server")

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
# A region younger than this may belong to a Triton that is starting right now: the file exists
# between shm_open and mmap, and during that instant no process maps it.
STARTUP_SHM_GRACE_S = 10.0


def cleanup_stale_shm(
    min_age: float = STARTUP_SHM_GRACE_S, paths: Iterable[Path] | None = None
) -> list[Path]:
    """Remove Python-backend shm regions that no live process maps; return what was removed.

    ``paths`` limits the sweep to those regions (a server's own, on stop); by default every
    ``/dev/shm/triton_python_backend_shm_region_*`` is a candidate. ``min_age`` (seconds since the
    last change) spares regions that a starting server has created but not mapped yet. Regions of
    another running Triton are mapped by it and are never removed.
    """
    candidates = sorted(SHM_DIR.glob(SHM_PREFIX + "*")) if paths is None else list(paths)
    if not candidates:
        return []
    # Every readable process; another user's unreadable maps hide only regions that are that
    # user's files, which the sticky /dev/shm stops us deleting anyway.
    mapped = procfs.mapped_paths()
    now = time.time()
    uid = os.getuid()
    removed: list[Path] = []
    for path in candidates:
        try:
            st = path.stat()
            if uid != 0 and st.st_uid != uid:
                continue
            if now - st.st_mtime < min_age or str(path) in mapped:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        except PermissionError:
            continue
        removed.append(path)
        log.info("removed stale Triton shared-memory region %s", path)
    return removed


def shm_regions_of(pids: Iterable[int]) -> set[Path]:
    return procfs.mapped_under(f"{SHM_DIR}/{SHM_PREFIX}", pids)
