"""A resource census of a running service: what a leak would make grow, counted.

From the kernel (/proc, read by lva_core/runtime/procfs.py), for any process: threads (native
ones included: gRPC's, FFmpeg's decoder threads), open file descriptors, live descendant
processes and resident memory; and the /dev/shm regions the core created (``lva_<pid>_<n>``,
lva_core/inference/shm.py). From the core's own ``/metrics`` (read with prometheus_client's
parser): its unfinished asyncio tasks, its Python threads by kind (a ``decode`` thread per
running stream) and its event subscribers.

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

from prometheus_client.parser import text_string_to_metric_families

from lva_core.runtime import procfs

SHM_DIR = Path("/dev/shm")
# lva_core.inference.shm.PREFIX: not imported, as that module needs numpy; procfs needs nothing.
SHM_PREFIX = "lva_"
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


def shm_regions(pid: int | None = None) -> list[str]:
    """Names of the core's regions in /dev/shm: of ``pid``, or of every core when None."""
    prefix = f"{SHM_PREFIX}{pid}_" if pid is not None else SHM_PREFIX
    return sorted(p.name for p in SHM_DIR.glob(f"{prefix}*"))


def orphan_shm_regions() -> list[str]:
    """Regions whose core process is gone: what a crashed core leaves behind if nobody cleans up."""
    orphans = []
    for name in shm_regions():
        pid = name[len(SHM_PREFIX) :].split("_", 1)[0]
        if pid.isdigit() and not procfs.exists(int(pid)):
            orphans.append(name)
    return orphans


def mapped_shm(pids: list[int]) -> set[Path]:
    """The /dev/shm files any of ``pids`` has mapped."""
    return procfs.mapped_under(f"{SHM_DIR}/", pids)


class Metrics:
    """One scrape of a Prometheus text page: its samples, summed by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` (a counter's ``..._total``) that carry ``labels``."""
        return sum(
            sample.value
            for sample in self.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def value(self, name: str, default: float) -> float:
        """The sample called ``name`` without labels, or ``default`` when the page has none."""
        return next((s.value for s in self.samples if s.name == name and not s.labels), default)


def scrape(port: int, timeout: float = 5.0) -> Metrics:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        return Metrics(resp.read().decode())


def process_census(pid: int) -> dict[str, int]:
    """What the kernel says about one process (zeros when it is gone)."""
    return {
        "threads": procfs.thread_count(pid),
        "fds": procfs.fd_count(pid),
        "children": max(0, len(procfs.tree(pid)) - 1),
        "rss_kib": procfs.rss_kib(pid),
    }


def core_census(pid: int, metrics_port: int) -> dict[str, int]:
    """The process census of the core plus its shm regions, tasks, Python threads and subscribers."""
    census = process_census(pid)
    census["shm_regions"] = len(shm_regions(pid))
    metrics = scrape(metrics_port)
    census["tasks"] = int(metrics.value("lva_core_asyncio_tasks", -1))
    census["python_threads"] = int(metrics.total("lva_core_threads"))
    census["native_threads"] = census["threads"] - census["python_threads"]
    census["decode_threads"] = int(metrics.total("lva_core_threads", kind="decode"))
    census["subscribers"] = int(metrics.total("lva_event_subscribers"))
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
