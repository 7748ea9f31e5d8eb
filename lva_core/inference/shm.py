"""A pool of system shared-memory regions registered with Triton once and reused.

Registering a region per request costs two RPCs; a pool registers each region once. Regions
are sized in powers of two so that a few sizes serve every batch shape. Each region is a file
in /dev/shm named ``lva_<pid>_<n>``: the pid lets a later core remove regions a dead one left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from lva_core.runtime import procfs

SHM_DIR = Path("/dev/shm")
PREFIX = "lva_"
_NAME = re.compile(rf"^{PREFIX}(\d+)_\d+$")
MIN_REGION = 1 << 16


@dataclass
class Region:
    name: str
    size: int
    shm: shared_memory.SharedMemory = field(repr=False)

    @property
    def key(self) -> str:
        return f"/{self.name}"

    def array(self, dtype: np.dtype[Any], shape: tuple[int, ...], offset: int = 0) -> np.ndarray[Any, Any]:
        """A numpy view of the region: writing to it writes the shared memory, with no copy."""
        assert self.shm.buf is not None
        return np.ndarray(shape, dtype=dtype, buffer=self.shm.buf, offset=offset)

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.shm.unlink()
        with contextlib.suppress(BufferError):
            self.shm.close()


def _size_class(nbytes: int) -> int:
    return max(MIN_REGION, 1 << max(0, nbytes - 1).bit_length())


def owner_is_dead(name: str) -> bool:
    """Whether ``name`` is a region of a core process (``lva_<pid>_<n>``) that no longer exists."""
    match = _NAME.match(name)
    if match is None:
        return False
    pid = int(match.group(1))
    return pid != os.getpid() and not procfs.exists(pid)


def cleanup_dead_regions() -> list[Path]:
    """Remove the regions of core processes that no longer exist."""
    removed = []
    for path in SHM_DIR.glob(f"{PREFIX}*"):
        if owner_is_dead(path.name):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


class ShmPool:
    """Regions by size class; ``acquire`` waits when ``max_bytes`` are all in use (bounded)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._free: dict[int, list[Region]] = {}
        self._all: list[Region] = []
        self._in_use_bytes = 0
        self._counter = 0
        self._changed = asyncio.Condition()
        # Regions Triton has not registered yet (new ones, or all after Triton restarted).
        self.unregistered: set[str] = set()
        self.retired: list[Region] = []

    @property
    def regions(self) -> list[Region]:
        return list(self._all)

    def _create(self, size: int) -> Region:
        self._counter += 1
        name = f"{PREFIX}{os.getpid()}_{self._counter}"
        # The resource tracker stays registered on purpose: if this process dies without
        # close(), the tracker unlinks the region; close() unlinks (and unregisters) it itself.
        shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        region = Region(name, size, shm)
        self._all.append(region)
        self.unregistered.add(name)
        return region

    async def acquire(self, nbytes: int) -> Region:
        size = _size_class(nbytes)
        if size > self.max_bytes:
            raise ValueError(
                f"a request of {nbytes} bytes exceeds the shared-memory pool of {self.max_bytes}"
            )
        async with self._changed:
            while True:
                free = self._free.get(size)
                if free:
                    region = free.pop()
                    break
                total = sum(r.size for r in self._all)
                if total + size <= self.max_bytes:
                    region = self._create(size)
                    break
                idle = [r for regions in self._free.values() for r in regions]
                if idle and total - sum(r.size for r in idle) + size <= self.max_bytes:
                    # Memory is held by idle regions of other sizes: give one back and retry.
                    victim = idle[0]
                    self._free[victim.size].remove(victim)
                    self._all.remove(victim)
                    self.retired.append(victim)
                    continue
                await self._changed.wait()
            self._in_use_bytes += region.size
            return region

    async def release(self, region: Region) -> None:
        async with self._changed:
            self._in_use_bytes -= region.size
            self._free.setdefault(region.size, []).append(region)
            self._changed.notify_all()

    def take_retired(self) -> list[Region]:
        """Regions given back to make room; the caller unregisters them from Triton, then closes them."""
        retired, self.retired = self.retired, []
        return retired

    def close(self) -> None:
        for region in [*self._all, *self.retired]:
            region.close()
        self._all.clear()
        self._free.clear()
        self.retired = []
