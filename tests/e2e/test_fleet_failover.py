"""The fleet with real cores: 3 agents on one PostgreSQL, one Triton, one facade over all of them,
and one RTSP server with a camera per stream that counts its reading sessions.

**The camera must never see two readers of one stream**: every test checks the server's record
of violations (lva_testkit/rtsp_server.py samples every camera every 50 ms, and a frozen agent's
session does not read) at its end, and its failover steps while they run. Short timings: renew
0.5 s, TTL 3 s, fence margin 1 s. The analytic is the cheap ``pipeline_probe``, so that Triton is
not what is measured.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import websockets

from lva_common.aio import wait_within
from lva_testkit.clips import clip
from lva_testkit.fleet import ACTIVE, Fleet, Owners, Timing, camera_stream
from lva_testkit.postgres import PostgresCluster
from lva_testkit.rtsp_server import RtspServer
from lva_testkit.stack import Service
from lva_testkit.streams import create, delete, get, patch
from lva_testkit.tcp_proxy import TcpProxy

CAMERAS = 24
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cameras(tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator[RtspServer]:
    footage = clip(tmp_path_factory.mktemp("fleet"), "fleet.mp4", seconds=4.0)
    server = RtspServer(footage, log_dir / "rtsp-fleet.log", mounts=CAMERAS, respawn=True).start()
    yield server
    server.stop()


@pytest.fixture
async def fleet(
    postgres: PostgresCluster,
    triton: Service,
    log_dir: Path,
    request: pytest.FixtureRequest,
    cameras: RtspServer,
) -> AsyncIterator[Fleet]:
    name = "f_" + request.node.name.lower()[:40].replace("[", "_").replace("]", "")
    folder = log_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    started = Fleet(folder, triton.address, postgres.database(name))
    violations_before = len(cameras.violations())
    try:
        yield started
    finally:
        started.stop()
    assert cameras.violations()[violations_before:] == [], "a camera had two readers"


async def _start(fleet: Fleet, capacities: dict[str, int]) -> str:
    for agent_id, capacity in capacities.items():
        fleet.start_core(agent_id, capacity)
    facade = fleet.start_facade()
    return f"http://{facade.address}"


async def _create(http: aiohttp.ClientSession, base: str, cameras: RtspServer, count: int) -> list[str]:
    return [await create(http, base, camera_stream(cameras.url_of(f"/cam{n}"))) for n in range(count)]


def _all_in_progress(ids: list[str], alive: set[str]) -> Callable[[Owners], bool]:
    def check(owners: Owners) -> bool:
        return all(owners[s][0] in alive and owners[s][1] == "in_progress" for s in ids)

    return check


async def _rows(fleet: Fleet, ids: list[str]) -> dict[str, tuple[str, float, str | None]]:
    db = await asyncpg.connect(fleet.database)
    try:
        rows = await db.fetch(
            "SELECT stream_id, status, last_update_time, owner_id FROM streams WHERE stream_id = ANY($1)", ids
        )
    finally:
        await db.close()
    return {r["stream_id"]: (r["status"], r["last_update_time"], r["owner_id"]) for r in rows}


def _per_agent(owners: dict[str, tuple[str | None, str]]) -> Counter[str | None]:
    return Counter(owner for owner, status in owners.values() if status in ACTIVE)


async def test_sigkill_of_an_agent_moves_its_streams_within_ttl_plus_5_s(
    fleet: Fleet, http: aiohttp.ClientSession, cameras: RtspServer
) -> None:
    base = await _start(fleet, {"a1": 32, "a2": 32, "a3": 32})
    ids = await _create(http, base, cameras, CAMERAS)
    owners = await fleet.wait_for(_all_in_progress(ids, {"a1", "a2", "a3"}), 60, "24 streams in progress")
    spread = _per_agent(owners)
    assert spread == {"a1": 8, "a2": 8, "a3": 8}, spread  # placed by percent: a third each
    victims = [s for s, (owner, _) in owners.items() if owner == "a2"]
    killed_at = time.monotonic()
    fleet.kill("a2")
    await fleet.wait_for(_all_in_progress(ids, {"a1", "a3"}), fleet.timing.ttl + 5, "a2's streams on others")
    moved_in = time.monotonic() - killed_at
    assert moved_in <= fleet.timing.ttl + 5
    final = await fleet.owners()
    assert len(final) == CAMERAS and {final[s][0] for s in victims} <= {"a1", "a3"}
    # Every camera has exactly one reader again: none lost, none doubled.
    for n in range(CAMERAS):
        cameras.wait_readers(f"/cam{n}", 1, 10)
    # The stream's JSON names its agent, from any core.
    body = await get(http, base, victims[0])
    assert body["agent_id"] in {"a1", "a3"} and body["status"] == "in_progress"


async def test_a_frozen_agent_past_its_ttl_changes_nothing_and_registers_again(
    fleet: Fleet, http: aiohttp.ClientSession, cameras: RtspServer
) -> None:
    base = await _start(fleet, {"a1": 32, "a2": 32})
    ids = await _create(http, base, cameras, 6)
    owners = await fleet.wait_for(_all_in_progress(ids, {"a1", "a2"}), 60, "6 streams in progress")
    frozen = [s for s, (owner, _) in owners.items() if owner == "a1"]
    assert frozen
    fleet.freeze("a1")
    await fleet.wait_for(_all_in_progress(ids, {"a2"}), fleet.timing.ttl + 5, "a1's streams on a2")
    before = await _rows(fleet, frozen)
    fleet.thaw("a1")
    # It wakes, finds its lease gone, stops its workers without a write that counts, and
    # registers again with a new incarnation.
    await fleet.wait_log("a1", "registered again")
    await asyncio.sleep(1.0)  # what it would still write after its wake-up, it has written by now
    assert await _rows(fleet, frozen) == before  # its late writes changed nothing
    owners = await fleet.owners()
    assert all(owners[s] == ("a2", "in_progress") for s in frozen), owners
    async with http.get(f"{base}/1/agents") as resp:
        agents = {a["agent_id"]: a for a in (await resp.json())["agents"]}
    assert agents["a1"]["status"] == "alive", agents
    for s in frozen:
        body = await get(http, base, s)
        assert body["agent_id"] == "a2" and body["status"] == "in_progress"
    log = fleet.cores["a1"].log_text()
    assert "lease lost" in log and "registered again" in log


async def test_sigterm_drains_and_the_streams_move_within_2_s(
    fleet: Fleet, http: aiohttp.ClientSession, cameras: RtspServer
) -> None:
    base = await _start(fleet, {"a1": 32, "a2": 32})
    ids = await _create(http, base, cameras, 6)
    owners = await fleet.wait_for(_all_in_progress(ids, {"a1", "a2"}), 60, "6 streams in progress")
    moving = [s for s, (owner, _) in owners.items() if owner == "a1"]
    assert moving
    core = fleet.cores["a1"]
    started = time.monotonic()
    core.proc.send_signal(15)

    def moved(owners: dict[str, tuple[str | None, str]]) -> bool:
        return all(owners[s][0] == "a2" and owners[s][1] in ACTIVE for s in moving)

    await fleet.wait_for(moved, 2.0, "a1's streams claimed by a2", interval=0.05)
    assert time.monotonic() - started <= 2.0
    await fleet.wait_for(_all_in_progress(ids, {"a2"}), 20, "all in progress on a2")
    assert core.proc.wait(20) == 0


async def test_capacity_3_agents_of_4_and_14_streams_then_one_dies(
    fleet: Fleet, http: aiohttp.ClientSession, cameras: RtspServer
) -> None:
    base = await _start(fleet, {"a1": 4, "a2": 4, "a3": 4})
    ids = await _create(http, base, cameras, 14)

    def twelve(owners: dict[str, tuple[str | None, str]]) -> bool:
        return sum(1 for s in ids if owners[s][0] and owners[s][1] == "in_progress") == 12

    owners = await fleet.wait_for(twelve, 60, "12 of 14 running")
    assert _per_agent({s: owners[s] for s in ids if owners[s][0]}) == {"a1": 4, "a2": 4, "a3": 4}
    waiting = [s for s in ids if owners[s][0] is None]
    assert len(waiting) == 2 and all(owners[s][1] == "pending" for s in waiting)
    fleet.kill("a3")

    def eight(owners: dict[str, tuple[str | None, str]]) -> bool:
        running = [s for s in ids if owners[s][0] in {"a1", "a2"} and owners[s][1] == "in_progress"]
        return len(running) == 8

    owners = await fleet.wait_for(eight, fleet.timing.ttl + 10, "8 running after a3 died")
    await asyncio.sleep(fleet.timing.ttl + 1)  # a3's lease has run out: nothing else may move now
    owners = await fleet.owners()
    assert sum(1 for s in ids if owners[s][0] in {"a1", "a2"}) == 8
    assert sum(1 for s in ids if owners[s][0] is None) == 6


async def test_delete_or_pause_while_the_owner_is_dead_is_never_revived(
    fleet: Fleet, http: aiohttp.ClientSession, cameras: RtspServer
) -> None:
    base = await _start(fleet, {"a1": 32, "a2": 32})
    ids = await _create(http, base, cameras, 4)
    owners = await fleet.wait_for(_all_in_progress(ids, {"a1", "a2"}), 60, "4 streams in progress")
    on_a1 = [s for s, (owner, _) in owners.items() if owner == "a1"]
    assert len(on_a1) >= 2, owners
    deleted, paused = on_a1[0], on_a1[1]
    fleet.kill("a1")
    await delete(http, base, deleted)  # a2 answers: its owner is dead
    body = await patch(http, base, paused, "pause")
    assert body["status"] == "pause"
    await asyncio.sleep(fleet.timing.ttl + 3)  # past a1's lease: others could claim by now
    owners = await fleet.owners()
    assert deleted not in owners
    assert owners[paused] == (None, "pause")
    async with http.get(f"{base}/1/streams/{deleted}") as resp:
        assert resp.status == 404
    mount = cameras.url_of(f"/cam{ids.index(deleted)}").rsplit("/", 1)[1]
    assert cameras.readers()[f"/{mount}"] == 0
    # A resume from any core makes it claimable again.
    await patch(http, base, paused, "pending")
    await fleet.wait_for(_all_in_progress([paused], {"a2"}), 20, "the resumed stream runs on a2")


async def test_a_websocket_opened_before_the_owner_dies_follows_the_stream(
    fleet: Fleet, http: aiohttp.ClientSession, cameras: RtspServer
) -> None:
    base = await _start(fleet, {"a1": 32, "a2": 32, "a3": 32})
    [stream_id] = await _create(http, base, cameras, 1)
    owners = await fleet.wait_for(_all_in_progress([stream_id], {"a1", "a2", "a3"}), 60, "in progress")
    owner = owners[stream_id][0]
    assert owner is not None
    ws_url = base.replace("http", "ws") + f"/1/ws?stream_id={stream_id}"
    statuses: list[str] = []
    events_after_failover = 0
    async with websockets.connect(ws_url) as websocket:
        first = json.loads(await wait_within(websocket.recv(), 10))
        assert first["stream_status"] == "in_progress"
        # Events flow from the owner first (the facade's watch may sit on any core).
        while not json.loads(await wait_within(websocket.recv(), 10)).get("analytics_results"):
            pass
        fleet.kill(owner)
        deadline = time.monotonic() + fleet.timing.ttl + 20
        while events_after_failover < 3:
            assert time.monotonic() < deadline, statuses
            message = json.loads(await wait_within(websocket.recv(), deadline - time.monotonic()))
            if message.get("analytics_results"):
                if "in_progress" in statuses:
                    events_after_failover += 1
            elif message.get("stream_status"):
                statuses.append(message["stream_status"])
    assert statuses[:1] == ["restart"] and statuses[-1] == "in_progress", statuses
    assert "stop" not in statuses
    new_owner = (await fleet.owners())[stream_id][0]
    assert new_owner not in (None, owner)


async def test_the_facade_keeps_answering_when_a_core_dies(
    fleet: Fleet, http: aiohttp.ClientSession, cameras: RtspServer
) -> None:
    base = await _start(fleet, {"a1": 32, "a2": 32})
    ids = await _create(http, base, cameras, 2)
    await fleet.wait_for(_all_in_progress(ids, {"a1", "a2"}), 60, "in progress")
    fleet.kill("a1")
    for _ in range(10):  # round robin skips the dead core: every call is answered
        async with http.get(f"{base}/1/streams") as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["count"] == 2


async def test_an_agent_cut_off_from_postgresql_fences_itself_before_others_claim(
    fleet: Fleet, http: aiohttp.ClientSession, cameras: RtspServer, postgres: PostgresCluster
) -> None:
    proxy = TcpProxy(postgres.port).start()
    try:
        fleet.start_core("a1", 32, {"LVA_STREAMS__STORE": _through(fleet, postgres, proxy)})
        fleet.start_core("a2", 32)
        base = f"http://{fleet.start_facade().address}"
        ids = await _create(http, base, cameras, 6)
        owners = await fleet.wait_for(_all_in_progress(ids, {"a1", "a2"}), 60, "6 streams in progress")
        cut_off = [s for s, (owner, _) in owners.items() if owner == "a1"]
        assert cut_off
        mounts = {s: f"/cam{ids.index(s)}" for s in cut_off}
        proxy.cut()
        # The camera shows a1's sessions ending before a2's begin: no violation (the fixture
        # checks it), and every moved stream runs on a2 once a1's lease has run out.
        await fleet.wait_for(_all_in_progress(ids, {"a2"}), fleet.timing.ttl + 10, "a1's streams on a2")
        assert "lease lost" in fleet.cores["a1"].log_text()
        for mount in mounts.values():
            cameras.wait_readers(mount, 1, 10)
        proxy.restore()
        await fleet.wait_log("a1", "registered again")
        owners = await fleet.owners()
        assert all(owners[s][0] == "a2" for s in cut_off)
    finally:
        proxy.stop()


async def test_a_postgresql_restart_moves_no_stream(
    postgres: PostgresCluster,
    triton: Service,
    log_dir: Path,
    cameras: RtspServer,
    http: aiohttp.ClientSession,
) -> None:
    # TTL 6 s: a fast restart of the server (about a second here) must not outlast the agents'
    # time to fence (TTL - margin after their last renewal), or they rightly give up their streams.
    folder = log_dir / "f_pg_restart"
    folder.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(
        folder, triton.address, postgres.database("f_pg_restart"), Timing(renew=0.5, ttl=6.0, margin=1.0)
    )
    violations_before = len(cameras.violations())
    try:
        base = await _start(fleet, {"a1": 32, "a2": 32})
        ids = await _create(http, base, cameras, 6)
        before = await fleet.wait_for(_all_in_progress(ids, {"a1", "a2"}), 60, "6 streams in progress")
        postgres.restart("fast")
        await asyncio.sleep(fleet.timing.ttl)  # a whole lease: renewals after the restart kept them
        after = await fleet.owners()
        assert after == before, (before, after)
        for a in ("a1", "a2"):
            assert "lease lost" not in fleet.cores[a].log_text()
        # The stores reconnected: the API still answers and writes.
        await patch(http, base, ids[0], "pause")
        await fleet.wait_for(lambda o: o[ids[0]][1] == "pause", 10, "paused after the restart")
        cameras.wait_readers(f"/cam{ids.index(ids[0])}", 0, 10)  # its worker stopped
    finally:
        fleet.stop()
    assert cameras.violations()[violations_before:] == [], "a camera had two readers"


CHAOS_SECONDS = 90.0


async def test_seeded_chaos_keeps_every_invariant(
    fleet: Fleet, http: aiohttp.ClientSession, cameras: RtspServer, postgres: PostgresCluster
) -> None:
    """Kill, freeze and cut off agents at random (seed 12) for 90 s: no camera ever has two
    readers (sampled every 50 ms by the server), no stream is ever lost, and once the chaos
    stops every stream runs again on a live agent."""
    rng = random.Random(12)
    violations_before = len(cameras.violations())
    agents = ["a1", "a2", "a3"]
    proxies = {a: TcpProxy(postgres.port).start() for a in agents}
    try:
        for a in agents:
            fleet.start_core(a, 32, {"LVA_STREAMS__STORE": _through(fleet, postgres, proxies[a])})
        base = f"http://{fleet.start_facade().address}"
        ids = await _create(http, base, cameras, 12)
        await fleet.wait_for(_all_in_progress(ids, set(agents)), 60, "12 streams in progress")
        actions: list[str] = []
        ends = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < ends:
            victim, action = rng.choice(agents), rng.choice(["kill", "freeze", "cut"])
            actions.append(f"{action} {victim}")
            if action == "kill":
                fleet.kill(victim)
                await asyncio.sleep(rng.uniform(1, 4))
                fleet.start_core(
                    victim, 32, {"LVA_STREAMS__STORE": _through(fleet, postgres, proxies[victim])}
                )
            elif action == "freeze":
                fleet.freeze(victim)
                await asyncio.sleep(rng.uniform(0.5, fleet.timing.ttl + 2))
                fleet.thaw(victim)
            else:
                proxies[victim].cut()
                await asyncio.sleep(rng.uniform(0.5, fleet.timing.ttl + 2))
                proxies[victim].restore()
            owners = await fleet.owners()
            assert set(ids) <= set(owners), f"a stream was lost after {actions}"
            assert all(owners[s][1] in ACTIVE for s in ids), (actions, owners)
            assert cameras.violations()[violations_before:] == [], actions
            await asyncio.sleep(rng.uniform(0.5, 3))
        await fleet.wait_for(
            _all_in_progress(ids, set(agents)), fleet.timing.ttl + 30, f"all running after {actions}"
        )
    finally:
        for proxy in proxies.values():
            proxy.stop()


def _through(fleet: Fleet, postgres: PostgresCluster, proxy: TcpProxy) -> str:
    return fleet.database.replace(f":{postgres.port}/", f":{proxy.port}/")
