"""``make fleet`` (lva_core/runtime/fleet_stack.py) as the README describes it: a local PostgreSQL,
one Triton, 2 cores and one facade on free ports; both agents listed ``alive`` by ``GET /1/agents``,
a stream run by one of them, and SIGINT stopping every process the launcher started, with exit
status 0. The cluster it leaves behind is durable: started again, it holds the stream and both
agents, stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from lva_core.runtime import procfs
from lva_core.runtime.local_postgres import LocalPostgres
from lva_testkit.clips import clip
from lva_testkit.documented import poll
from lva_testkit.paths import PYTHON, REPO
from lva_testkit.ports import free_ports, port_open
from lva_testkit.streams import create, file_stream, get, wait_status

AGENTS = 2
PROBE = [{"analytic_name": "pipeline_probe"}]
_STARTED = re.compile(r"^fleet: (.+?) started, pid (\d+)", re.MULTILINE)
pytestmark = pytest.mark.timeout(240)


def _port_block(count: int) -> int:
    """The first of ``count`` consecutive ports, all free now: the cores' ports, 1 apart."""
    for _ in range(50):
        [base] = free_ports(1)
        with ExitStack() as held:
            try:
                for port in range(base, base + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:  # taken, or past 65535
                continue
            return base
    raise AssertionError(f"no {count} consecutive free ports")


@dataclass
class FleetRun:
    proc: subprocess.Popen[bytes]
    log_path: Path
    data: Path
    ports: dict[str, int]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['facade']}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def started(self) -> dict[str, int]:
        """Who the launcher says it started: its children and the PostgreSQL server, by pid."""
        return {name.split(" postgresql://")[0]: int(pid) for name, pid in _STARTED.findall(self.log_text())}


@pytest.fixture
def fleet_run(tmp_path: Path) -> Iterator[FleetRun]:
    # PostgreSQL's directory: not under pytest's, which the postgres user cannot enter under root.
    data = Path(tempfile.mkdtemp(prefix="lva-fleet-"))
    data.chmod(0o755)
    pg, facade, triton_grpc, triton_http, triton_metrics = free_ports(5)
    cores = _port_block(2 * AGENTS)  # core i: cores + 2i (gRPC), cores + 2i + 1 (metrics)
    ports = {"pg": pg, "facade": facade, "triton": triton_grpc, "triton_http": triton_http}
    ports |= {f"core{i}": cores + 2 * i for i in range(AGENTS)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LVA_")} | {
        "LVA_STREAMS__ALLOWED_FILE_DIRS": json.dumps([str(tmp_path)]),
        "LVA_TRITON__LOG_PATH": str(tmp_path / "triton.log"),
        "LVA_TRITON__STARTUP_TIMEOUT": "120",
        "PYTHONUNBUFFERED": "1",
    }
    args = [
        PYTHON, "-m", "lva_core.runtime.fleet_stack", "--agents", str(AGENTS),
        "--data", str(data / "postgres"), "--pg-port", str(pg), "--facade-port", str(facade),
        "--core-port", str(cores), "--core-metrics-port", str(cores + 1), "--port-step", "2",
        "--triton-grpc-port", str(triton_grpc), "--triton-http-port", str(triton_http),
        "--triton-metrics-port", str(triton_metrics),
    ]  # fmt: skip
    log_path = tmp_path / "fleet.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    run = FleetRun(proc, log_path, data, ports)
    try:
        yield run
    finally:
        if proc.poll() is None:
            proc.kill()  # its children get SIGTERM (PR_SET_DEATHSIG); the server is stopped below
            proc.wait(30)
        LocalPostgres(data / "postgres", pg).stop(mode="immediate")
        shutil.rmtree(data, ignore_errors=True)


async def _agents(http: aiohttp.ClientSession, base_url: str) -> list[dict[str, Any]]:
    try:
        async with http.get(f"{base_url}/1/agents") as resp:
            return list((await resp.json())["agents"]) if resp.status == 200 else []
    except aiohttp.ClientConnectionError:
        return []


async def test_the_fleet_runs_two_agents_on_one_triton_and_stops_on_sigint(
    fleet_run: FleetRun, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    base_url = fleet_run.base_url

    async def up() -> bool:
        assert fleet_run.proc.poll() is None, fleet_run.log_text()[-3000:]
        return "(Ctrl-C stops everything)" in fleet_run.log_text()

    await poll(up, 150, "the fleet's start")
    assert f"REST {base_url}" in fleet_run.log_text()
    assert f"PostgreSQL postgresql://lva@127.0.0.1:{fleet_run.ports['pg']}/lva" in fleet_run.log_text()

    async def all_alive() -> list[dict[str, Any]]:
        agents = await _agents(http, base_url)
        return agents if len(agents) == AGENTS and all(a["status"] == "alive" for a in agents) else []

    agents = await poll(all_alive, 60, "both agents alive")
    hostname = socket.gethostname()
    assert sorted(a["agent_id"] for a in agents) == [f"{hostname}-agent-{i}" for i in range(AGENTS)]
    assert sorted(a["endpoint"] for a in agents) == sorted(
        f"127.0.0.1:{fleet_run.ports[f'core{i}']}" for i in range(AGENTS)
    )

    # A stream, created through the facade, is claimed and run by one of the agents.
    footage = clip(tmp_path, "fleet.mp4", seconds=30.0, size=(320, 180))
    stream_id = await create(http, base_url, file_stream(footage, PROBE))

    async def owner() -> str:
        stream = await get(http, base_url, stream_id)
        assert stream["status"] != "failure", stream
        return str(stream.get("agent_id") or "")

    assert await poll(owner, 60, "the stream's agent") in {a["agent_id"] for a in agents}
    done = await wait_status(http, base_url, stream_id, {"done", "failure"}, 60)
    assert done["status"] == "done", done

    # Every process it started, PostgreSQL's included (pg_ctl detaches the server from it).
    started = fleet_run.started()
    assert set(started) >= {"PostgreSQL", "Triton", "facade", *(f"core {i}" for i in range(AGENTS))}
    processes = set(procfs.tree(fleet_run.proc.pid)) | set(procfs.tree(started["PostgreSQL"]))
    assert set(started.values()) <= processes
    assert any("tritonserver" in " ".join(procfs.command_line(pid)) for pid in processes)

    fleet_run.proc.send_signal(signal.SIGINT)
    code = await asyncio.to_thread(fleet_run.proc.wait, 90)
    assert code == 0, fleet_run.log_text()[-3000:]

    async def all_gone() -> bool:
        return all(procfs.gone(pid) for pid in processes)

    await poll(all_gone, 30, "processes of the stopped fleet")
    assert not any(port_open(port) for port in fleet_run.ports.values())
    assert procfs.started_with(lambda args: any(str(fleet_run.data) in arg for arg in args)) == {}

    # The cluster outlives the fleet: the next one finds its stream and its agents.
    cluster = LocalPostgres(fleet_run.data / "postgres", fleet_run.ports["pg"])
    await asyncio.to_thread(cluster.start)
    try:
        db = await asyncpg.connect(cluster.url)
        try:
            streams = [str(r["stream_id"]) for r in await db.fetch("SELECT stream_id FROM streams")]
            statuses = {
                r["agent_id"]: r["status"] for r in await db.fetch("SELECT agent_id, status FROM agents")
            }
        finally:
            await db.close()
    finally:
        await asyncio.to_thread(cluster.stop)
    assert streams == [stream_id]
    assert statuses == {a["agent_id"]: "stopped" for a in agents}


def test_make_fleet_starts_the_launcher_with_its_agents() -> None:
    done = subprocess.run(
        # --no-print-directory: under `make test` this make is nested and would add its
        # "Entering/Leaving directory" lines.
        ["make", "--no-print-directory", "-n", "fleet", "AGENTS=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1].endswith("-m lva_core.runtime.fleet_stack --agents 2"), (
        done.stdout
    )
