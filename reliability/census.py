"""A resource census of a running service: what a leak would make grow, counted.

From the kernel (/proc), for any process: threads (native ones included: gRPC's, FFmpeg's
decoder threads), open file descriptors, live descendant processes and resident memory; and
the /dev/shm regions the core created (``lva_<pid>_<n>``, lva_core/inference/shm.py). From
the core's own ``/metrics``: its unfinished asyncio tasks, its Python threads by kind (a
``decode`` thread per running stream) and its event subscribers.

Counts are compared with a baseline taken after a warm-up, because some pools are created
lazily and then kept on purpose: the default executor of ``asyncio.to_thread`` grows up to
``min(32, cpus + 4)`` threads and never shrinks, gRPC starts its polling threads on first use.
:func:`settle` polls until the counts are back within their slack (threads, tasks and fds are
released asynchronously: a decoding thread notices a stop within one read timeout).
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks import procs

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "lva_"  # lva_core.inference.shm.PREFIX: not imported, so that this runs without the core's deps
EXECUTOR_THREADS = min(32, (os.cpu_count() or 1) + 4)

# How much each count may exceed its baseline once settled, and why.
SLACK: dict[str, int] = {
    # The to_thread executor grows lazily up to EXECUTOR_THREADS and keeps its threads; the
    # baseline may have seen fewer of them busy at once than a fault does.
    "python_threads": EXECUTOR_THREADS,
    # Threads Python does not know: gRPC's, FFmpeg's decoder threads. A new Triton connection
    # has been seen to add up to 4 gRPC threads; a decoder kept alive by a held error adds 2-4
    # per stream (what lva_core/pipeline/source.py now prevents), so 5 failed streams exceed it.
    "native_threads": 4,
    "threads": EXECUTOR_THREADS + 4,
    # A keep-alive HTTP connection or a gRPC subchannel reconnecting may hold one or two.
    "fds": 4,
    "children": 0,
    # Size classes of the pool are created on demand (a batch of a new size): a couple more.
    "shm_regions": 2,
    "tasks": 2,
    "decode_threads": 0,
    "subscribers": 0,
}


def _count_dir(path: str) -> int:
    try:
        return len(os.listdir(path))
    except OSError:
        return 0


def shm_regions(pid: int | None = None) -> list[str]:
    """Names of the core's regions in /dev/shm: of ``pid``, or of every core when None."""
    prefix = f"{SHM_PREFIX}{pid}_" if pid is not None else SHM_PREFIX
    return sorted(p.name for p in SHM_DIR.glob(f"{prefix}*"))


def orphan_shm_regions() -> list[str]:
    """Regions whose core process is gone: what a crashed core leaves behind if nobody cleans up."""
    orphans = []
    for name in shm_regions():
        pid = name[len(SHM_PREFIX) :].split("_", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            orphans.append(name)
    return orphans


def mapped_shm(pids: list[int]) -> set[Path]:
    """The /dev/shm files any of ``pids`` has mapped."""
    found = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)  # address, perms, offset, device, inode, path
            path = fields[5] if len(fields) == 6 else ""
            if path.startswith(f"{SHM_DIR}/"):
                found.add(Path(path.removesuffix(" (deleted)")))
    return found


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as {'name{labels}': value}, comments dropped."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            values[key] = float(value)
        except ValueError:
            continue
    return values


def scrape(port: int, timeout: float = 5.0) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        return parse_metrics(resp.read().decode())


def process_census(pid: int) -> dict[str, int]:
    """What the kernel says about one process (zeros when it is gone)."""
    return {
        "threads": _count_dir(f"/proc/{pid}/task"),
        "fds": _count_dir(f"/proc/{pid}/fd"),
        "children": max(0, len(procs.tree(pid)) - 1),
        "rss_kib": procs.rss_kib(pid),
    }


def core_census(pid: int, metrics_port: int) -> dict[str, int]:
    """The process census of the core plus its shm regions, tasks, Python threads and subscribers."""
    census = process_census(pid)
    census["shm_regions"] = len(shm_regions(pid))
    metrics = scrape(metrics_port)
    census["tasks"] = int(metrics.get("lva_core_asyncio_tasks", -1))
    census["python_threads"] = int(sum(v for k, v in metrics.items() if k.startswith("lva_core_threads{")))
    census["native_threads"] = census["threads"] - census["python_threads"]
    census["decode_threads"] = int(metrics.get('lva_core_threads{kind="decode"}', 0))
    census["subscribers"] = int(sum(v for k, v in metrics.items() if k.startswith("lva_event_subscribers{")))
    return census


def excess(
    baseline: Mapping[str, int], now: Mapping[str, int], slack: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Counts above baseline + slack (rss_kib is not a count: growth is judged separately)."""
    allowed = {**SLACK, **(slack or {})}
    over = {}
    for key, value in now.items():
        if key == "rss_kib" or key not in baseline:
            continue
        limit = baseline[key] + allowed.get(key, 0)
        if value > limit:
            over[key] = value - baseline[key]
    return over


def delta(baseline: Mapping[str, int], now: Mapping[str, int]) -> dict[str, int]:
    return {key: now[key] - baseline[key] for key in now if key in baseline}


async def settle(
    take: Any, baseline: Mapping[str, int], timeout: float = 30.0, slack: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Poll ``take()`` until no count exceeds its baseline + slack, or ``timeout``.

    Returns the last census, its delta from the baseline, what still exceeds (empty when
    settled) and how long settling took.
    """
    started = time.monotonic()
    while True:
        now = await asyncio.to_thread(take)
        over = excess(baseline, now, slack)
        elapsed = time.monotonic() - started
        if not over or elapsed > timeout:
            return {
                "census": now,
                "delta": delta(baseline, now),
                "excess": over,
                "settled_s": round(elapsed, 2),
            }
        await asyncio.sleep(0.5)
