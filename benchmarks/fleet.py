"""The fleet's benchmarks: failover after SIGKILL and SIGTERM, 1 against 2 agents, PostgreSQL's load.

Several real cores (``python -m lva_core``) share one throw-away PostgreSQL database
(lva_testkit/postgres.py) and the suite's Triton, as lva_testkit/fleet.py starts them for the
fleet's tests. Who owns which stream is read from the database itself, as the claims see it:
a stream counts as running on an agent when the agent's live incarnation owns it and its stored
status is ``in_progress``. The cameras are one RTSP server with a mount per stream, which counts
the reading sessions of every mount (lva_testkit/rtsp_server.py): two at once is a double read.

* **failover**: agents with short lease timings (renew 0.5 s, TTL 3 s, margin 1 s), K cameras.
  Each trial sends SIGKILL (a crash) or SIGTERM (a drain) to the agent that holds the most
  streams and polls the database every 50 ms: per stream it held, the time from the signal to
  the first poll that shows it owned by another live agent (``claimed``) and ``in_progress``
  there (``running``). The agent is started again (a new incarnation) and the next trial waits
  until it is alive, every stream runs and every camera has exactly one reader. The kinds are
  interleaved, so that the machine's drift hits both alike.
* **throughput**: the same N file streams (every frame into ``pipeline_probe``) on a fleet of one
  agent and of two on the same Triton, interleaved; frames/s = frames analysed (the cores'
  ``lva_frame_analysis_seconds`` counts) / (the last stream's ``done`` time - the resume).
* **postgres_load**: a steady fleet (streams running, no faults) for T seconds; statements/s
  from ``pg_stat_statements`` (loaded for the run), transactions/s from ``pg_stat_database``,
  and each agent's connections (``pg_stat_activity``, told apart by the agents' sockets).

Benchmarks never fail on a slow figure: a missed target is a result (``met: false``). The
section raises only when it cannot measure (a core that does not start, streams that never run).
``python -m benchmarks.fleet [--quick]`` runs this section alone, on a Triton of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from benchmarks import profile
from benchmarks.api import FINAL, PROBE, Api, stream_body
from benchmarks.measures import Context, Sizes, clip_info
from benchmarks.stack import CACHE, cached_clip
from benchmarks.stats import median, rnd, summary
from lva_core.runtime import procfs
from lva_core.runtime.local_postgres import PostgresError
from lva_testkit.fleet import ACTIVE, OWNERS, Fleet, Owners, Timing, wait_owners
from lva_testkit.fleet import camera_stream as fleet_camera
from lva_testkit.postgres import PostgresCluster, new_cluster
from lva_testkit.rtsp_server import RtspServer, tcp_sockets
from lva_testkit.rtsp_server import available as rtsp_available
from lva_testkit.stack import Service

# The failover fleet's lease timings: the fleet tests' (lva_testkit/fleet.py).
FAILOVER_TIMING = Timing(renew=0.5, ttl=3.0, margin=1.0)
# The product's defaults (docs/fleet.md): the throughput fleet, and the second load figure.
DEFAULT_TIMING = Timing(renew=2.0, ttl=12.0, margin=2.0)
CRASH_MARGIN_S = 5.0  # target: a crashed agent's streams run elsewhere within TTL + this
DRAIN_TARGET_S = 2.0  # target: a drained agent's streams run elsewhere within this
POLL_S = 0.05  # how often the failover trials read the owners
# A trial gives up on a stream after TTL + this: the stream counts as lost.
LOST_AFTER_S = 30.0
CAPACITY = 32
# Throughput: small frames, so that the per-frame work under the GIL, not decoding, is what one
# core runs out of.
THROUGHPUT_SIZE = (640, 360)
CAMERA_SIZE = (640, 360)
FRAMES = "lva_frame_analysis_seconds"  # one observation per analysed frame, in every core


def camera_stream(url: str) -> dict[str, Any]:
    return fleet_camera(url, "bench-fleet-camera")


# ---- the database's view -------------------------------------------------------------------------

AGENTS = "SELECT agent_id, incarnation, status, lease_expires > now() AS live FROM agents"
ENDS = "SELECT stream_id, status, last_update_time, owner_id FROM streams WHERE stream_id = ANY($1)"


class Observer:
    """The benchmark's one connection to a fleet's database: Fleet.owners() without a connection
    per poll, so that polling every 50 ms measures the fleet rather than connection set-up."""

    def __init__(self, db: asyncpg.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, url: str) -> Observer:
        return cls(await asyncpg.connect(url, timeout=10))

    async def owners(self) -> Owners:
        rows = await self.db.fetch(OWNERS, timeout=10)
        return {str(r["stream_id"]): (r["live_owner"], str(r["status"])) for r in rows}

    async def agents(self) -> dict[str, tuple[int, str, bool]]:
        rows = await self.db.fetch(AGENTS, timeout=10)
        return {str(r["agent_id"]): (int(r["incarnation"]), str(r["status"]), bool(r["live"])) for r in rows}

    async def ends(self, ids: Sequence[str]) -> dict[str, tuple[str, float, str | None]]:
        rows = await self.db.fetch(ENDS, list(ids), timeout=10)
        return {
            str(r["stream_id"]): (str(r["status"]), float(r["last_update_time"]), r["owner_id"]) for r in rows
        }

    async def wait_for(self, predicate: Callable[[Owners], bool], timeout: float, what: str) -> Owners:
        return await wait_owners(self.owners, predicate, timeout, what, 0.1, _spread)

    async def wait_alive(self, agent_id: str, above: int, timeout: float) -> int:
        """Until ``agent_id`` is alive (its Triton up: it claims) at an incarnation above ``above``."""
        deadline = time.monotonic() + timeout
        while True:
            incarnation, status, live = (await self.agents()).get(agent_id, (0, "", False))
            if incarnation > above and status == "alive" and live:
                return incarnation
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent {agent_id} not alive within {timeout:g} s ({status})")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self.db.close()


def running_on(ids: Sequence[str], agents: set[str]) -> Callable[[Owners], bool]:
    def check(owners: Owners) -> bool:
        return all(s in owners and owners[s][0] in agents and owners[s][1] == "in_progress" for s in ids)

    return check


def _spread(owners: Owners) -> dict[str, int]:
    counts: dict[str, int] = {}
    for owner, status in owners.values():
        key = f"{owner or 'nobody'}:{status}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _load(owners: Owners) -> dict[str, int]:
    counts: dict[str, int] = {}
    for owner, status in owners.values():
        if owner and status in ACTIVE:
            counts[owner] = counts.get(owner, 0) + 1
    return counts


# ---- the services ------------------------------------------------------------------------------------


@dataclass
class Bench:
    """What the fleet section needs from the suite."""

    triton_url: str
    triton: Service | None  # for its CPU time, when the suite started it
    log_dir: Path
    sizes: Sizes
    tick: Callable[[str], None]
    cluster: PostgresCluster | None = None
    statements: bool = False  # whether pg_stat_statements is loaded
    notes: list[str] = field(default_factory=list)
    loads: dict[str, Any] = field(default_factory=dict)  # postgres_load, by fleet


def files_allowed() -> dict[str, str]:
    # The benchmark's clips live in the cache: the one directory its streams read files from.
    return {"LVA_STREAMS__ALLOWED_FILE_DIRS": json.dumps([str(CACHE.resolve())])}


async def start_cores(fleet: Fleet, agent_ids: Sequence[str]) -> None:
    """Start the agents together (each start is mostly waiting for the interpreter)."""
    await asyncio.gather(
        *(asyncio.to_thread(fleet.start_core, a, CAPACITY, files_allowed()) for a in agent_ids)
    )


def start_postgres() -> tuple[PostgresCluster, bool, str | None]:
    """A throw-away cluster with pg_stat_statements loaded when it can be (a restart with
    ``shared_preload_libraries``); (cluster, loaded, why not)."""
    cluster = new_cluster()
    cluster.start()
    why: str | None = None
    try:
        done = cluster.run(
            "psql", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "lva", "-d", "lva", "-v",
            "ON_ERROR_STOP=1", "-c", "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
        )  # fmt: skip
        if done.returncode != 0:
            raise PostgresError(done.stderr.strip())
        cluster.restart("fast")
        done = cluster.run(
            "psql", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "lva", "-d", "lva", "-v",
            "ON_ERROR_STOP=1", "-c", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
        )  # fmt: skip
        if done.returncode != 0:
            raise PostgresError(done.stderr.strip())
    except (PostgresError, OSError) as exc:
        why = f"pg_stat_statements not available ({exc}); transactions only"
    return cluster, why is None, why


# ---- the section ----------------------------------------------------------------------------------


async def measure(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    result: dict[str, Any] = {
        "method": __doc__,
        "timing_failover": asdict(FAILOVER_TIMING),
        "timing_throughput": asdict(DEFAULT_TIMING),
    }
    bench.tick("fleet: PostgreSQL")
    try:
        cluster, bench.statements, why = await asyncio.to_thread(start_postgres)
    except (PostgresError, KeyError) as exc:  # KeyError: root without a postgres user
        return {"skipped": f"no PostgreSQL: {exc}"}
    bench.cluster = cluster
    if why:
        bench.notes.append(why)
    cameras: RtspServer | None = None
    try:
        if rtsp_available():
            clip = cached_clip(sizes.fleet_camera_clip_s, size=CAMERA_SIZE)
            server = RtspServer(
                clip, bench.log_dir / "rtsp-fleet.log", mounts=sizes.fleet_cameras, respawn=True
            )
            cameras = await asyncio.to_thread(server.start)
        result["throughput"] = await throughput(bench, cameras)
        if cameras is None:
            result["failover"] = {"skipped": "GStreamer's RTSP server is not installed"}
            result["postgres_load"] = {"skipped": "GStreamer's RTSP server is not installed"}
        else:
            result["failover"] = await failover(bench, cameras)
            result["postgres_load"] = {"method": LOAD_METHOD, **bench.loads}
    finally:
        if cameras is not None:
            cameras.stop()
        await asyncio.to_thread(cluster.stop)
    result["notes"] = bench.notes
    result["summary"] = fleet_summary(result)
    return result


def fleet_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures, None where missing."""

    def get(*path: str) -> Any:
        node: Any = result
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    return {
        "sigkill_running_s": {q: get("failover", "sigkill", "running_s", q) for q in ("p50", "p99", "max")},
        "sigterm_running_s": {q: get("failover", "sigterm", "running_s", q) for q in ("p50", "p99", "max")},
        "sigkill_target_met": get("failover", "sigkill", "target", "met"),
        "sigterm_target_met": get("failover", "sigterm", "target", "met"),
        "double_reads": get("failover", "double_reads"),
        "lost_streams": get("failover", "lost_streams"),
        "throughput_fps": {
            "1_agent": get("throughput", "agents_1_fps"),
            "2_agents": get("throughput", "agents_2_fps"),
            "ratio": get("throughput", "ratio"),
        },
        "statements_per_s_per_agent": {
            name: get("postgres_load", name, "statements_per_s_per_agent") for name in ("failover", "default")
        },
    }


# ---- throughput: 1 against 2 agents ----------------------------------------------------------------


async def throughput(bench: Bench, cameras: RtspServer | None) -> dict[str, Any]:
    """The same N file streams on one agent, then on two, interleaved (repeats), on one Triton.

    The fleet runs at the product's default lease timings; it keeps agent t1 and starts t2 for
    each two-agent run and drains it after (SIGTERM). At the end, with two agents and the cameras
    running, it gives the PostgreSQL load at the default timings.
    """
    sizes = bench.sizes
    assert bench.cluster is not None
    clip = cached_clip(sizes.fleet_throughput_clip_s, size=THROUGHPUT_SIZE)
    warm_up = cached_clip(1.0, size=THROUGHPUT_SIZE)
    folder = bench.log_dir / "fleet-throughput"
    folder.mkdir(parents=True, exist_ok=True)
    database = await asyncio.to_thread(bench.cluster.database, "bench_throughput")
    fleet = Fleet(folder, bench.triton_url, database, DEFAULT_TIMING)
    observer: Observer | None = None
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    try:
        bench.tick("fleet: throughput, starting t1")
        await start_cores(fleet, ["t1"])
        facade = fleet.start_facade()  # over t1, which stays: every core answers every call
        observer = await Observer.open(database)
        await observer.wait_alive("t1", 0, 60)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            api = Api(http, f"http://{facade.address}", f"ws://{facade.address}/1/ws")
            incarnation = 0
            # A core's first streams register its shared memory with Triton and wake its paths
            # up: a short unmeasured run on every new line-up first.
            await throughput_run(bench, fleet, observer, api, warm_up, ["t1"], streams=2)
            for repeat in range(sizes.fleet_throughput_repeats):
                bench.tick(f"fleet: throughput 1 agent #{repeat + 1}")
                runs[1].append(await throughput_run(bench, fleet, observer, api, clip, ["t1"]))
                bench.tick(f"fleet: throughput 2 agents #{repeat + 1}")
                await start_cores(fleet, ["t2"])
                incarnation = await observer.wait_alive("t2", incarnation, 60)
                await throughput_run(bench, fleet, observer, api, warm_up, ["t1", "t2"], streams=4)
                runs[2].append(await throughput_run(bench, fleet, observer, api, clip, ["t1", "t2"]))
                if repeat + 1 < sizes.fleet_throughput_repeats:
                    await asyncio.to_thread(fleet.drain, "t2")
            if cameras is not None:
                bench.tick("fleet: PostgreSQL load, default timings")
                ids = await create_cameras(api, cameras, bench.sizes.fleet_cameras)
                await observer.wait_for(running_on(ids, {"t1", "t2"}), 60, "the cameras in progress")
                await one_reader_each(cameras, len(ids), 20)
                bench.loads["default"] = await steady_load(bench, fleet, ["t1", "t2"], DEFAULT_TIMING)
                for stream_id in ids:
                    await api.delete(stream_id)
                await one_reader_each_gone(cameras, len(ids), 20)
    finally:
        if observer is not None:
            await observer.close()
        await asyncio.to_thread(fleet.stop)
    one = median([r["fps"] for r in runs[1]])
    two = median([r["fps"] for r in runs[2]])
    ratios = [b["fps"] / a["fps"] for a, b in zip(runs[1], runs[2], strict=True) if a["fps"]]
    section: dict[str, Any] = {
        "method": (
            f"{sizes.fleet_throughput_streams} file streams of the clip, every frame into pipeline_probe, "
            "created paused and resumed together, on a fleet of 1 agent and then of 2 (the second "
            "started for the run, drained after it), interleaved, one Triton; each new line-up first runs "
            "a short unmeasured warm-up (1 s clip). fps = frames analysed "
            "(sum over the cores of lva_frame_analysis_seconds' count) / (the last stream's done time "
            "- the resume). ratio = 2-agent fps / 1-agent fps, median over the repeats. cpu: CPU "
            "seconds per second of each core process and of Triton over the run; machine_busy_cpus: "
            "of the whole machine (/proc/stat), other work included: near cpus_usable, the machine "
            "itself is the limit and a second agent has nothing to gain."
        ),
        "clip": clip_info(clip),
        "streams": sizes.fleet_throughput_streams,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "agents_1_fps": rnd(one, 1),
        "agents_2_fps": rnd(two, 1),
        "ratio": rnd(median(ratios)),
        "ratio_samples": [rnd(r) for r in ratios],
        "runs": {"1": runs[1], "2": runs[2]},
    }
    return section


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (not idle, not waiting for I/O), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / procfs.CLOCK_TICKS


def _frames(text_counts: profile.Snapshot) -> float:
    return float(text_counts["counts"].get(FRAMES, 0.0))


async def throughput_run(
    bench: Bench,
    fleet: Fleet,
    observer: Observer,
    api: Api,
    clip: Path,
    agents: Sequence[str],
    streams: int | None = None,
) -> dict[str, Any]:
    n = streams or bench.sizes.fleet_throughput_streams
    body = stream_body(clip, PROBE, status="pause", name="bench-fleet-throughput")
    ids = [await api.create(body) for _ in range(n)]
    cores = {a: fleet.cores[a] for a in agents}

    async def frames() -> dict[str, float]:
        snaps = await asyncio.gather(
            *(
                profile.snapshot(api.http, f"http://127.0.0.1:{c.metrics_port}/metrics")
                for c in cores.values()
            )
        )
        return {a: _frames(s) for a, s in zip(cores, snaps, strict=True)}

    def cpu() -> dict[str, float]:
        used = {a: procfs.tree_cpu_seconds(c.proc.pid) for a, c in cores.items()}
        if bench.triton is not None:
            used["triton"] = procfs.tree_cpu_seconds(bench.triton.proc.pid)
        return used

    try:
        frames_before, cpu_before, busy_before = await frames(), cpu(), machine_busy_seconds()
        load_average = [round(v, 2) for v in os.getloadavg()]
        resumed = time.time()
        await asyncio.gather(*(api.patch(i, "pending") for i in ids))
        deadline = time.monotonic() + 600
        while True:
            ends = await observer.ends(ids)
            if len(ends) == n and all(status in FINAL for status, _, _ in ends.values()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"throughput streams not done in 600 s: {sorted(ends.values())[:3]}")
            await asyncio.sleep(0.05)
        frames_after, cpu_after, busy_after = await frames(), cpu(), machine_busy_seconds()
    finally:
        for stream_id in ids:
            await api.delete(stream_id)
    bad = [status for status, _, _ in ends.values() if status != "done"]
    if bad:
        raise RuntimeError(f"a throughput stream ended {bad[0]}")
    seconds = max(t for _, t, _ in ends.values()) - resumed
    per_agent = {a: frames_after[a] - frames_before[a] for a in cores}
    total = sum(per_agent.values())
    placed: dict[str, int] = {}
    for _, _, owner in ends.values():
        placed[owner or "nobody"] = placed.get(owner or "nobody", 0) + 1
    return {
        "agents": len(agents),
        "frames": int(total),
        "frames_expected": n * int(clip_info(clip)["frames"]),
        "seconds": round(seconds, 3),
        "fps": round(total / seconds, 1) if seconds > 0 else 0.0,
        "frames_per_agent": {a: int(v) for a, v in per_agent.items()},
        "streams_per_agent": placed,
        "machine_busy_cpus": round((busy_after - busy_before) / seconds, 2) if seconds > 0 else None,
        "load_average_start": load_average,
        "cpu": {k: round((cpu_after[k] - cpu_before[k]) / seconds, 2) for k in cpu_after}
        if seconds > 0
        else {},
    }


# ---- PostgreSQL's load ------------------------------------------------------------------------------

LOAD_METHOD = (
    "A steady fleet (every camera stream in progress, one reader each, no faults, nobody calling "
    "the API) for a fixed time. statements: calls counted by pg_stat_statements for the fleet's "
    "database (utility statements such as BEGIN, COMMIT and LISTEN included), read from another "
    "database so that reading them does not count; transactions: xact_commit + xact_rollback of "
    "pg_stat_database, which a backend flushes within a second while busy and within 10 s once idle: "
    "the window starts fleet_load_settle_s after the streams run, and the quick run's 1 s lets the "
    "start-up's transactions in (too high there). "
    "Per agent: the total / the number of agents. connections: the fleet database's backends in "
    "pg_stat_activity, each given to the agent whose process holds the client's socket. "
    "failover: the failover fleet's timings (renew 0.5 s); default: the product's (renew 2 s)."
)


async def _counters(admin: asyncpg.Connection, database: str, statements: bool) -> dict[str, Any]:
    xacts = await admin.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", database
    )
    calls: dict[str, tuple[str, int]] = {}
    if statements:
        rows = await admin.fetch(
            """
            SELECT userid::text || '/' || queryid::text || '/' || toplevel::text AS key, query, calls
            FROM pg_stat_statements
            WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)
            """,
            database,
        )
        calls = {str(r["key"]): (str(r["query"]), int(r["calls"])) for r in rows}
    return {"at": time.monotonic(), "xacts": int(xacts or 0), "calls": calls}


def _client_ports(pid: int, server_port: int) -> set[int]:
    """The local ports of the TCP connections to ``server_port`` that ``pid``'s process tree holds."""
    inodes: set[str] = set()
    for each in procfs.tree(pid):
        try:
            fds = os.listdir(f"/proc/{each}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{each}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    return {
        local[1] for inode, local, remote in tcp_sockets() if inode in inodes and remote[1] == server_port
    }


async def _connections(
    admin: asyncpg.Connection, database: str, fleet: Fleet, agents: Sequence[str], server_port: int
) -> dict[str, int]:
    rows = await admin.fetch("SELECT client_port FROM pg_stat_activity WHERE datname = $1", database)
    owners: dict[int, str] = {}
    for agent in agents:
        for port in _client_ports(fleet.cores[agent].proc.pid, server_port):
            owners[port] = agent
    counts = {a: 0 for a in agents} | {"others": 0}
    for row in rows:
        counts[owners.get(int(row["client_port"] or -1), "others")] += 1
    return counts


async def steady_load(bench: Bench, fleet: Fleet, agents: Sequence[str], timing: Timing) -> dict[str, Any]:
    """Statements and transactions per second per agent over a steady window of the fleet."""
    assert bench.cluster is not None
    database = fleet.database.rsplit("/", 1)[1]
    admin = await asyncpg.connect(bench.cluster.url, timeout=10)
    try:
        await asyncio.sleep(bench.sizes.fleet_load_settle_s)
        before = await _counters(admin, database, bench.statements)
        await asyncio.sleep(bench.sizes.fleet_load_s)
        after = await _counters(admin, database, bench.statements)
        connections = await _connections(admin, database, fleet, agents, bench.cluster.port)
    finally:
        await admin.close()
    seconds = after["at"] - before["at"]
    per_query: list[tuple[str, int]] = []
    for key, (query, calls) in after["calls"].items():
        delta = calls - before["calls"].get(key, ("", 0))[1]
        if delta > 0:
            per_query.append((query, delta))
    per_query.sort(key=lambda x: -x[1])
    statements = sum(n for _, n in per_query)
    xacts = after["xacts"] - before["xacts"]
    n = len(agents)
    return {
        "agents": n,
        "timing": asdict(timing),
        "seconds": round(seconds, 2),
        "statements_per_s": rnd(statements / seconds, 2) if bench.statements else None,
        "statements_per_s_per_agent": rnd(statements / seconds / n, 2) if bench.statements else None,
        "statements_per_renewal_per_agent": (
            rnd(statements / seconds / n * timing.renew, 2) if bench.statements else None
        ),
        "transactions_per_s": rnd(xacts / seconds, 2),
        "transactions_per_s_per_agent": rnd(xacts / seconds / n, 2),
        "connections": connections,
        "connections_per_agent": rnd(sum(v for k, v in connections.items() if k != "others") / n, 2),
        "top_statements": [
            {"per_s": rnd(calls / seconds, 2), "query": " ".join(query.split())[:160]}
            for query, calls in per_query[:8]
        ],
    }


# ---- failover ---------------------------------------------------------------------------------------


async def create_cameras(api: Api, cameras: RtspServer, count: int) -> list[str]:
    ids = []
    for n in range(count):  # one after another, as cameras come online
        ids.append(await api.create(camera_stream(cameras.url_of(f"/cam{n}"))))
        await asyncio.sleep(0.05)
    return ids


async def one_reader_each(cameras: RtspServer, count: int, timeout: float) -> None:
    """Until each of the first ``count`` cameras has exactly one reader."""
    deadline = time.monotonic() + timeout
    mounts = [f"/cam{n}" for n in range(count)]
    while True:
        readers = cameras.readers()
        if all(readers.get(m) == 1 for m in mounts):
            return
        if time.monotonic() > deadline:
            odd = {m: readers.get(m) for m in mounts if readers.get(m) != 1}
            raise TimeoutError(f"cameras without exactly one reader after {timeout:g} s: {odd}")
        await asyncio.sleep(0.1)


async def one_reader_each_gone(cameras: RtspServer, count: int, timeout: float) -> None:
    """Until none of the first ``count`` cameras has a reader (their streams were deleted)."""
    deadline = time.monotonic() + timeout
    mounts = [f"/cam{n}" for n in range(count)]
    while any(cameras.readers().get(m) for m in mounts):
        if time.monotonic() > deadline:
            raise TimeoutError(f"cameras still read {timeout:g} s after their streams were deleted")
        await asyncio.sleep(0.1)


async def failover(bench: Bench, cameras: RtspServer) -> dict[str, Any]:
    sizes = bench.sizes
    assert bench.cluster is not None
    folder = bench.log_dir / "fleet-failover"
    folder.mkdir(parents=True, exist_ok=True)
    database = await asyncio.to_thread(bench.cluster.database, "bench_failover")
    fleet = Fleet(folder, bench.triton_url, database, FAILOVER_TIMING)
    agents = [f"a{n + 1}" for n in range(sizes.fleet_agents)]
    trials: dict[str, list[dict[str, Any]]] = {"sigkill": [], "sigterm": []}
    observer: Observer | None = None
    try:
        bench.tick(f"fleet: {len(agents)} agents, {sizes.fleet_cameras} cameras")
        await start_cores(fleet, agents)
        facade = fleet.start_facade()
        observer = await Observer.open(database)
        for agent in agents:
            await observer.wait_alive(agent, 0, 60)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            api = Api(http, f"http://{facade.address}", f"ws://{facade.address}/1/ws")
            ids = await create_cameras(api, cameras, sizes.fleet_cameras)
        await observer.wait_for(running_on(ids, set(agents)), 60, "the cameras in progress")
        await one_reader_each(cameras, len(ids), 20)
        placed = _load(await observer.owners())
        bench.tick("fleet: PostgreSQL load, failover timings")
        bench.loads["failover"] = await steady_load(bench, fleet, agents, FAILOVER_TIMING)
        index = 0
        for repeat in range(sizes.fleet_failovers):
            for kind in ("sigkill", "sigterm"):
                bench.tick(f"fleet: {kind} #{repeat + 1}")
                trials[kind].append(await trial(bench, fleet, observer, cameras, ids, agents, kind, index))
                index += 1
        final = await observer.owners()
    finally:
        if observer is not None:
            await observer.close()
        await asyncio.to_thread(fleet.stop)
    violations = cameras.violations()
    lost_at_end = [s for s in ids if s not in final or final[s][1] not in ACTIVE]
    ttl = FAILOVER_TIMING.ttl
    return {
        "method": (
            f"{len(agents)} agents (renew {FAILOVER_TIMING.renew:g} s, TTL {ttl:g} s, margin "
            f"{FAILOVER_TIMING.margin:g} s), {len(ids)} live cameras (one RTSP mount each, every 5th "
            "frame into pipeline_probe). Each trial signals the agent holding the most streams and "
            f"polls the database every {POLL_S * 1000:.0f} ms: per stream it held, claimed_s = signal "
            "to the first poll showing it owned by another live agent, running_s = ... and in_progress "
            f"there. A stream not running elsewhere within TTL + {LOST_AFTER_S:g} s is lost. Then the "
            "agent starts again (a new incarnation) and the next trial waits until it is alive, every "
            "stream runs and every camera has one reader. SIGKILL and SIGTERM trials alternate. "
            f"Targets: SIGKILL p99 <= TTL + {CRASH_MARGIN_S:g} s, SIGTERM p99 <= {DRAIN_TARGET_S:g} s. "
            "double_reads: the RTSP server's violations (two reading sessions of one camera at one "
            "sample, every 50 ms) over the whole fleet section."
        ),
        "agents": len(agents),
        "cameras": len(ids),
        "initial_placement": placed,
        "sigkill": kind_summary(trials["sigkill"], ttl + CRASH_MARGIN_S),
        "sigterm": kind_summary(trials["sigterm"], DRAIN_TARGET_S),
        "double_reads": len(violations),
        "violations": violations[:20],
        "max_readers": max(cameras.max_readers().values(), default=0),
        "lost_streams": sum(len(t["lost"]) for ts in trials.values() for t in ts) + len(lost_at_end),
        "lost_at_end": lost_at_end,
        "rtsp_server_respawns": cameras.respawns,
    }


def kind_summary(trials: Sequence[dict[str, Any]], target: float) -> dict[str, Any]:
    running = [x for t in trials for x in t["running_s"]]
    claimed = [x for t in trials for x in t["claimed_s"]]
    stats = summary(running)
    return {
        "trials": len(trials),
        "streams_moved": sum(t["moved"] for t in trials),
        "running_s": stats,
        "claimed_s": summary(claimed),
        "target": {
            "p99_at_most_s": target,
            "met": None if stats["p99"] is None else bool(stats["p99"] <= target),
        },
        "lost": sum(len(t["lost"]) for t in trials),
        "runs": list(trials),
    }


async def trial(
    bench: Bench,
    fleet: Fleet,
    observer: Observer,
    cameras: RtspServer,
    ids: Sequence[str],
    agents: Sequence[str],
    kind: str,
    index: int,
) -> dict[str, Any]:
    owners = await observer.owners()
    load = _load(owners)
    # The agent holding the most streams; ties go round, so that every agent is a victim in turn.
    victim = max(agents, key=lambda a: (load.get(a, 0), -((agents.index(a) - index) % len(agents))))
    moving = [s for s in ids if owners.get(s, (None, ""))[0] == victim]
    others = set(agents) - {victim}
    core = fleet.cores[victim]
    incarnation = (await observer.agents())[victim][0]
    violations_before = len(cameras.violations())
    claimed: dict[str, float] = {}
    running: dict[str, float] = {}
    exited: float | None = None
    started = time.monotonic()
    core.proc.send_signal(signal.SIGKILL if kind == "sigkill" else signal.SIGTERM)
    deadline = started + FAILOVER_TIMING.ttl + LOST_AFTER_S
    while len(running) < len(moving) and time.monotonic() < deadline:
        polled = time.monotonic()
        # The poll's start: the database answers with what it held at about that moment.
        owners = await observer.owners()
        if exited is None and core.proc.poll() is not None:
            exited = time.monotonic() - started
        for s in moving:
            owner, status = owners.get(s, (None, "deleted"))
            if owner in others and status in ACTIVE:
                claimed.setdefault(s, polled - started)
                if status == "in_progress":
                    running.setdefault(s, polled - started)
        await asyncio.sleep(max(0.0, POLL_S - (time.monotonic() - polled)))
    # A drained core exits once its workers stopped and its calls ended (grace): wait for it.
    code = await asyncio.to_thread(_wait_exit, core, 30.0)
    if exited is None:
        exited = time.monotonic() - started
    lost = [s for s in moving if s not in running]
    restarting = time.monotonic()
    await asyncio.to_thread(fleet.start_core, victim, CAPACITY, files_allowed())
    await observer.wait_alive(victim, incarnation, 60)
    restart_s = time.monotonic() - restarting
    settled: float | None = None
    try:
        await observer.wait_for(running_on(ids, set(agents)), 30, "every stream running again")
        await one_reader_each(cameras, len(ids), 15)
        settled = time.monotonic() - restarting
    except TimeoutError as exc:
        bench.notes.append(f"{kind} trial {index + 1}: did not settle: {exc}"[:500])
    return {
        "victim": victim,
        "moved": len(moving),
        "claimed_s": sorted(round(v, 3) for v in claimed.values()),
        "running_s": sorted(round(v, 3) for v in running.values()),
        "lost": lost,
        "exited_s": round(exited, 3),
        "exit_code": code,
        "restart_s": round(restart_s, 2),
        "settled_s": rnd(settled, 2),
        "double_reads": len(cameras.violations()) - violations_before,
    }


def _wait_exit(core: Service, timeout: float) -> int:
    """The core's exit status once it exited by itself (SIGKILL, or the end of a drain); a core
    still running after ``timeout`` is stopped (and its status is that of the stop)."""
    with contextlib.suppress(Exception):
        core.proc.wait(timeout)
    return core.stop()


async def section(ctx: Context) -> dict[str, Any]:
    """The section as benchmarks/run.py calls it: on the suite's Triton, logs in its folder."""
    triton = ctx.stack.triton
    return await measure(Bench(triton.address, triton, ctx.stack.log_dir, ctx.sizes, ctx.tick))


# ---- steps and the command line ---------------------------------------------------------------------


def steps(sizes: Sizes, rtsp: bool) -> int:
    """How many times the section ticks the progress bar."""
    count = 2 + 2 * sizes.fleet_throughput_repeats  # PostgreSQL, t1, the runs
    if rtsp:
        count += 1 + 2 + 2 * sizes.fleet_failovers  # default load, agents, failover load, trials
    return count


def main(argv: list[str] | None = None) -> int:
    """This section alone, on a Triton of its own: ``python -m benchmarks.fleet [--quick] [--out F]``."""
    from lva_testkit.stack import start_triton

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the quick suite's sizes")
    parser.add_argument("--out", type=Path, help="write the section's JSON here (default: stdout)")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    log_dir = CACHE / "logs" / (datetime.now().strftime("%Y-%m-%dT%H%M%S") + "-fleet")
    log_dir.mkdir(parents=True, exist_ok=True)
    triton = start_triton(log_dir)
    started = time.monotonic()
    try:

        def tick(label: str) -> None:
            print(f"[{time.monotonic() - started:6.1f} s] {label}", file=sys.stderr, flush=True)

        section = asyncio.run(measure(Bench(triton.address, triton, log_dir, sizes, tick)))
    finally:
        triton.stop()
    section["duration_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(section, indent=1, allow_nan=False)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
