"""Agents of the fleet on a real PostgreSQL: registration, leases, self-fencing, GET /1/agents.

Short timings throughout (renew 0.3 s, TTL 2 s, margin 0.5 s): the behaviour is the same at the
defaults, only slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from lva_core.fleet.directory import AgentStatus
from lva_core.fleet.identity import AgentSpec
from lva_core.fleet.lease import LeaseTiming
from lva_core.fleet.postgres_agents import PostgresAgents
from lva_core.streams.store.postgresql import PostgresStreamStore
from lva_testkit.postgres import PostgresCluster
from lva_testkit.stack import Service, start_core, start_facade
from lva_testkit.tcp_proxy import TcpProxy

TIMING = LeaseTiming(renew_interval=0.3, ttl=2.0, margin=0.5)


@pytest.fixture
def database(postgres: PostgresCluster, request: pytest.FixtureRequest) -> str:
    """A database of the test's own, with the schema (the stream store creates it)."""
    url = postgres.database("a_" + request.node.name.lower()[:50].replace("[", "_").replace("]", ""))
    asyncio.run(_close(PostgresStreamStore(url)))
    return url


async def _close(store: PostgresStreamStore) -> None:
    await store.close()


def _spec(agent_id: str) -> AgentSpec:
    return AgentSpec(agent_id, f"{agent_id}.local:5241", 4, ("people_counter",), {"zone": "east"})


class Events:
    """What the callbacks saw, thread-safe: they run on the agent's lease thread."""

    def __init__(self) -> None:
        self.fenced: list[float] = []
        self.registered: list[int] = []
        self.changed = threading.Event()

    def on_fenced(self) -> None:
        self.fenced.append(time.monotonic())
        self.changed.set()

    def on_registered(self, incarnation: int) -> None:
        self.registered.append(incarnation)
        self.changed.set()


def _agents(url: str, spec: AgentSpec, events: Events, count: int = 0) -> PostgresAgents:
    return PostgresAgents(
        url,
        spec,
        TIMING,
        lambda: count,
        events.on_fenced,
        events.on_registered,
        registered_as=AgentStatus.ALIVE,
    )


async def _row(url: str, agent_id: str) -> asyncpg.Record:
    db = await asyncpg.connect(url)
    try:
        row = await db.fetchrow(
            "SELECT incarnation, status, lease_expires > now() AS leased FROM agents WHERE agent_id = $1",
            agent_id,
        )
    finally:
        await db.close()
    assert row is not None
    return row


async def _wait(condition: threading.Event, timeout: float) -> None:
    assert await asyncio.get_running_loop().run_in_executor(None, condition.wait, timeout), "timed out"
    condition.clear()


async def test_an_agent_registers_renews_and_leaves(database: str) -> None:
    events = Events()
    agents = _agents(database, _spec("a1"), events, count=3)
    first = agents.start()
    try:
        [view] = await agents.list()
        assert (view.spec.agent_id, view.incarnation, view.status) == ("a1", first, AgentStatus.ALIVE)
        assert view.spec.endpoint == "a1.local:5241" and view.spec.capacity == 4
        assert view.spec.analytics == ("people_counter",) and view.spec.labels == {"zone": "east"}
        assert view.stream_count == 3
        before = view.last_renewal
        await asyncio.sleep(TIMING.ttl * 1.5)  # past one TTL: only renewals keep it alive
        [view] = await agents.list()
        assert view.status is AgentStatus.ALIVE and view.last_renewal > before
        assert events.fenced == []
    finally:
        await agents.close()
    row = await _row(database, "a1")
    assert (row["status"], row["leased"]) == ("stopped", False)


async def test_every_start_is_a_new_incarnation_and_the_old_one_is_fenced(database: str) -> None:
    old_events, new_events = Events(), Events()
    old = _agents(database, _spec("a2"), old_events)
    first = old.start()
    new = _agents(database, _spec("a2"), new_events)  # the same pod, started again
    try:
        second = new.start()
        assert second > first
        # The old start's next renewal changes no row: it is finished, and fences at once.
        await _wait(old_events.changed, TIMING.renew_interval * 5)
        assert len(old_events.fenced) == 1 and new_events.fenced == []
        assert (await _row(database, "a2"))["incarnation"] == second
    finally:
        await old.close()  # a stale start leaving changes nothing: its incarnation is gone
        assert (await _row(database, "a2"))["status"] == "alive"
        await new.close()


def _through_proxy(database: str, postgres: PostgresCluster) -> tuple[TcpProxy, str]:
    """A started proxy to the cluster, and the database's URL through it."""
    proxy = TcpProxy(postgres.port).start()
    return proxy, database.replace(f"127.0.0.1:{postgres.port}", proxy.address)


async def test_an_agent_cut_off_fences_itself_before_its_lease_ends_then_comes_back(
    database: str, postgres: PostgresCluster
) -> None:
    proxy, url = _through_proxy(database, postgres)
    events = Events()
    agents = _agents(url, _spec("a3"), events)
    first = agents.start()
    try:
        cut_at = time.monotonic()
        proxy.cut()
        await _wait(events.changed, TIMING.ttl + 2)
        fenced_after = events.fenced[0] - cut_at
        # Within ttl - margin of the last renewal sent before the cut, so at most that long after it.
        assert fenced_after <= TIMING.ttl - TIMING.margin + 0.2, fenced_after
        # And before the database lets the lease go: nobody could have claimed its streams yet.
        row = await _row(database, "a3")
        assert row["leased"] and row["incarnation"] == first
        await asyncio.sleep(TIMING.ttl)
        listed = await _list_direct(database)
        assert listed["a3"] == "lost"  # seen from the fleet: the lease ran out
        proxy.restore()
        await _wait(events.changed, TIMING.ttl + 5)
        assert len(events.registered) == 1 and events.registered[0] > first
        assert (await _row(database, "a3"))["status"] == "alive"
    finally:
        proxy.restore()
        await agents.close()
        proxy.stop()


def _counted_renewals(agents: PostgresAgents, surprise: Exception | None = None) -> list[float]:
    """Each renewal attempt's time, from now on; the first raises ``surprise`` if one is given."""
    attempts: list[float] = []
    renew = agents._renew

    async def counted() -> bool:
        attempts.append(time.monotonic())
        if surprise is not None and len(attempts) == 1:
            raise surprise
        return await renew()

    agents._renew = counted  # type: ignore[method-assign]
    return attempts


async def test_a_driver_error_in_a_renewal_costs_one_renewal_not_the_lease(database: str) -> None:
    # What asyncpg raised in CI on a connection PostgreSQL had ended during a restart: not one of
    # its connection errors. It ended the keeper, and the agent's lease ran out with it.
    events = Events()
    agents = _agents(database, _spec("a5"), events)
    agents.start()
    try:
        surprise = asyncpg.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        )
        attempts = _counted_renewals(agents, surprise)
        await asyncio.sleep(TIMING.ttl * 1.5)
        assert len(attempts) >= 3 and events.fenced == []
        row = await _row(database, "a5")
        assert row["leased"] and row["status"] == "alive"
    finally:
        await agents.close()


async def test_a_refusing_database_is_retried_at_a_pace_not_in_a_tight_loop(
    database: str, postgres: PostgresCluster
) -> None:
    proxy, url = _through_proxy(database, postgres)
    events = Events()
    agents = _agents(url, _spec("a6"), events)
    agents.start()
    try:
        attempts = _counted_renewals(agents)
        proxy.stop()  # every connection is refused at once, as by a restarting server
        await asyncio.sleep(TIMING.ttl - TIMING.margin - 0.2)  # the lease still held all along
        # A renewal every renew_interval, then a retry every RETRY_PAUSE (0.1 s): about a dozen.
        assert 2 <= len(attempts) <= 20, len(attempts)
    finally:
        await agents.close()


async def test_an_agent_that_dies_without_leaving_is_lost_after_its_ttl(database: str) -> None:
    watcher = _agents(database, _spec("watcher"), Events())
    watcher.start()
    dying = _agents(database, _spec("a4"), Events())
    dying.start()
    try:
        # No more renewals and no goodbye, as SIGKILL leaves it: its lease loop just ends.
        keeper = dying._keeper
        assert keeper is not None

        async def end_the_lease_loop() -> None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

        await dying._background.run(end_the_lease_loop())
        dying._background.stop()
        statuses = {v.spec.agent_id: v.status for v in await watcher.list()}
        assert statuses["a4"] is AgentStatus.ALIVE
        await asyncio.sleep(TIMING.ttl + 0.5)
        statuses = {v.spec.agent_id: v.status for v in await watcher.list()}
        assert statuses == {"a4": AgentStatus.LOST, "watcher": AgentStatus.ALIVE}
    finally:
        await watcher.close()


async def _list_direct(url: str) -> dict[str, str]:
    db = await asyncpg.connect(url)
    try:
        rows = await db.fetch(
            "SELECT agent_id, CASE WHEN status IN ('alive', 'draining') AND lease_expires < now() "
            "THEN 'lost' ELSE status END AS status FROM agents"
        )
    finally:
        await db.close()
    return {r["agent_id"]: r["status"] for r in rows}


# ---------------------------------------------------------------- through a real core and facade


async def test_get_agents_lists_a_core_on_postgresql_until_it_stops(
    postgres: PostgresCluster, triton: Service, log_dir: Path, http: aiohttp.ClientSession
) -> None:
    url = postgres.database("fleet_core")
    env = {
        "LVA_STREAMS__STORE": url,
        "LVA_FLEET__AGENT_ID": "core-a",
        "LVA_FLEET__CAPACITY": "7",
        "LVA_FLEET__LABELS": "{gpu: none}",
        "LVA_FLEET__RENEW_INTERVAL": "0.3",
        "LVA_FLEET__LEASE_TTL": "2",
        "LVA_FLEET__FENCE_MARGIN": "0.5",
    }
    core = start_core(log_dir, triton.address, env)
    facade = start_facade(log_dir, core.address)
    try:
        async with http.get(f"http://{facade.address}/1/agents") as resp:
            assert resp.status == 200, await resp.text()
            [agent] = (await resp.json())["agents"]
        assert agent["agent_id"] == "core-a" and agent["status"] == "alive"
        assert agent["endpoint"] == core.address and agent["capacity"] == 7
        assert agent["labels"] == {"gpu": "none"} and agent["incarnation"] >= 1
        assert "people_counter" in agent["analytics"] and agent["stream_count"] == 0
    finally:
        facade.stop()
        core.stop()  # SIGTERM: it leaves the fleet
    assert (await _list_direct(url)) == {"core-a": "stopped"}


async def test_get_agents_on_a_single_core_lists_itself(
    http: aiohttp.ClientSession, base_url: str, core: Service
) -> None:
    async with http.get(f"{base_url}/1/agents") as resp:
        assert resp.status == 200, await resp.text()
        [agent] = (await resp.json())["agents"]
    assert agent["status"] == "alive" and agent["incarnation"] == 0
    assert agent["agent_id"].endswith(f":{core.port}") and agent["endpoint"] == core.address


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("LVA_FLEET__LEASE_TTL", "1", "renew_interval (2.0) must be above 0 and below"),
        ("LVA_FLEET__FENCE_MARGIN", "soon", "must be numbers of seconds"),
    ],
)
def test_a_core_with_unworkable_lease_timings_refuses_to_start(
    triton: Service, log_dir: Path, setting: str, value: str, says: str
) -> None:
    with pytest.raises(RuntimeError, match="exited with 1") as caught:
        start_core(log_dir, triton.address, {setting: value}, timeout=20)
    assert says in str(caught.value) and "Traceback" not in str(caught.value)


async def test_a_facade_balances_over_the_addresses_of_a_dns_name(
    http: aiohttp.ClientSession, log_dir: Path, core: Service
) -> None:
    # dns:///<name>:<port>, as on Kubernetes with a headless Service: every address the name
    # resolves to (localhost may give ::1 too, where no core listens: round robin skips it).
    facade = start_facade(log_dir, f"dns:///localhost:{core.port}")
    try:
        for _ in range(5):
            async with http.get(f"http://{facade.address}/1/agents") as resp:
                assert resp.status == 200, await resp.text()
                [agent] = (await resp.json())["agents"]
            assert agent["endpoint"] == core.address
    finally:
        facade.stop()
