"""Claims of streams by agents on a real PostgreSQL (lva_core.fleet.claims): one owner at most,
capacity, even placement, analytics, fenced writes, and the user's writes from anywhere.

The agents are real registrations with real leases (PostgresAgents, short timings); each claims
on a connection of its own, concurrently where the test says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest

from lva_core.fleet import claims
from lva_core.fleet.directory import AgentStatus
from lva_core.fleet.identity import AgentSpec
from lva_core.fleet.lease import LeaseTiming
from lva_core.fleet.postgres_agents import PostgresAgents
from lva_core.streams.spec import AnalyticSpec
from lva_core.streams.state import Status
from lva_core.streams.store.postgresql import PostgresStreamStore
from lva_testkit.postgres import PostgresCluster
from tests.unit.test_store_contract import record

TIMING = LeaseTiming(renew_interval=0.3, ttl=2.0, margin=0.5)
ALL = ("human_tracking", "people_counter", "pipeline_probe")


@pytest.fixture
async def store(
    postgres: PostgresCluster, request: pytest.FixtureRequest
) -> AsyncIterator[PostgresStreamStore]:
    url = postgres.database("c_" + request.node.name.lower()[:50].replace("[", "_").replace("]", ""))
    opened = PostgresStreamStore(url)
    try:
        yield opened
    finally:
        await opened.close()


class Agent:
    """A registered agent with its own connection for claims."""

    def __init__(self, url: str, agent_id: str, capacity: int, analytics: tuple[str, ...] = ALL) -> None:
        spec = AgentSpec(agent_id, f"{agent_id}:5241", capacity, analytics)
        self.lease = PostgresAgents(url, spec, TIMING, lambda: 0, registered_as=AgentStatus.ALIVE)
        self.agent_id = agent_id
        self.url = url
        self.incarnation = 0
        self.db: asyncpg.Connection | None = None

    async def start(self) -> Agent:
        self.incarnation = await asyncio.get_running_loop().run_in_executor(None, self.lease.start)
        self.db = await asyncpg.connect(self.url)
        return self

    async def claim_all(self) -> list[str]:
        assert self.db is not None
        return await claims.claim_all(self.db, self.agent_id, self.incarnation, time.time())

    async def owned(self) -> list[str]:
        assert self.db is not None
        return await claims.owned(self.db, self.agent_id, self.incarnation)

    async def write(self, stream_id: str, status: Status = Status.IN_PROGRESS, generation: int = 0) -> bool:
        assert self.db is not None
        return await claims.write_status(
            self.db, self.agent_id, self.incarnation, stream_id, status.value, None, time.time(), generation
        )

    async def die(self) -> None:
        """Renewals stop, no goodbye: as SIGKILL leaves an agent."""
        keeper = self.lease._keeper
        assert keeper is not None

        async def end_the_lease_loop() -> None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

        await self.lease._background.run(end_the_lease_loop())
        self.lease._background.stop()
        self.lease._closing = True  # close() after this has nothing left to do

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()
        await self.lease.close()


@contextlib.asynccontextmanager
async def agents(store: PostgresStreamStore, *specs: tuple[str, int]) -> AsyncIterator[list[Agent]]:
    started = [await Agent(store.url, agent_id, capacity).start() for agent_id, capacity in specs]
    try:
        yield started
    finally:
        for agent in started:
            await agent.close()


async def _insert(
    store: PostgresStreamStore, count: int, analytics: list[AnalyticSpec] | None = None
) -> list[str]:
    ids = []
    for number in range(count):
        stream = record(number, status=Status.PENDING)
        if analytics is not None:
            stream = replace(stream, analytics=analytics)
        await store.insert(stream)
        ids.append(stream.stream_id)
    return ids


async def _owners(store: PostgresStreamStore) -> dict[str, str | None]:
    db = await asyncpg.connect(store.url)
    try:
        rows = await db.fetch("SELECT stream_id, owner_id FROM streams")
    finally:
        await db.close()
    return {r["stream_id"]: r["owner_id"] for r in rows}


def _load(owners: dict[str, str | None]) -> dict[str | None, int]:
    counts: dict[str | None, int] = {}
    for owner in owners.values():
        counts[owner] = counts.get(owner, 0) + 1
    return counts


async def _rounds(fleet: list[Agent]) -> None:
    """Every agent claims, concurrently, round after round, until a round claims nothing."""
    while any(await asyncio.gather(*(agent.claim_all() for agent in fleet))):
        pass


async def test_three_agents_of_capacity_4_take_12_of_14_and_8_after_one_dies(
    store: PostgresStreamStore,
) -> None:
    await _insert(store, 14)
    async with agents(store, ("a", 4), ("b", 4), ("c", 4)) as fleet:
        await _rounds(fleet)
        assert _load(await _owners(store)) == {"a": 4, "b": 4, "c": 4, None: 2}
        await fleet[2].die()
        await asyncio.sleep(TIMING.ttl + 0.5)
        await _rounds(fleet[:2])
        # c's four are claimable now, but a and b are full: 8 run, 6 wait for capacity.
        load = _load(await _owners(store))
        assert (load["a"], load["b"], load[None] + load.get("c", 0)) == (4, 4, 6)


async def test_streams_spread_evenly_below_capacity(store: PostgresStreamStore) -> None:
    await _insert(store, 9)
    async with agents(store, ("a", 10), ("b", 10), ("c", 10)) as fleet:
        # One agent alone first: it takes one, then defers to the less loaded ones.
        assert len(await fleet[0].claim_all()) == 1
        await _rounds(fleet)
        assert _load(await _owners(store)) == {"a": 3, "b": 3, "c": 3}


async def test_the_least_loaded_agent_by_percent_is_preferred(store: PostgresStreamStore) -> None:
    await _insert(store, 6)
    async with agents(store, ("big", 8), ("small", 2)) as fleet:
        await _rounds(fleet)
        # 6 streams on capacities 8 and 2: "percent" placement gives 5 and 1 (62 % and 50 %),
        # where an even count would have filled the small agent first.
        assert _load(await _owners(store)) == {"big": 5, "small": 1}


async def test_an_agent_without_an_analytic_never_claims_its_streams(store: PostgresStreamStore) -> None:
    ids = await _insert(store, 2, analytics=[AnalyticSpec("human_tracking", {})])
    limited = await Agent(store.url, "no-faces", 10, ("people_counter",)).start()
    try:
        assert await limited.claim_all() == []  # the least loaded, and still not its streams
        capable = await Agent(store.url, "faces", 10).start()
        try:
            assert sorted(await capable.claim_all()) == sorted(ids)
        finally:
            await capable.close()
    finally:
        await limited.close()


async def test_concurrent_claimers_never_take_one_stream_twice(store: PostgresStreamStore) -> None:
    ids = await _insert(store, 40)
    async with agents(store, ("a", 100), ("b", 100), ("c", 100), ("d", 100)) as fleet:
        claimed = await asyncio.gather(*(agent.claim_all() for agent in fleet))
        await _rounds(fleet)
        owned = [await agent.owned() for agent in fleet]
    everything = [stream for per_agent in owned for stream in per_agent]
    assert sorted(everything) == sorted(ids)  # each exactly once
    assert all(len(set(c)) == len(c) for c in claimed)
    assert sorted(len(o) for o in owned) == [10, 10, 10, 10]


async def test_a_lost_stream_fences_its_old_owners_writes(store: PostgresStreamStore) -> None:
    [stream_id] = await _insert(store, 1)
    async with agents(store, ("a-old", 4), ("b-new", 4)) as fleet:
        old, new = fleet
        assert await old.claim_all() == [stream_id]  # equal loads: the smaller id goes first
        assert await old.write(stream_id)
        await old.die()
        assert await new.claim_all() == []  # owned by a live lease: not claimable
        await asyncio.sleep(TIMING.ttl + 0.5)
        assert await new.claim_all() == [stream_id]
        # The old owner's late writes (a frozen process waking up) change nothing.
        assert not await old.write(stream_id, Status.RESTART)
        assert await new.write(stream_id)
        [loaded] = store.load()
        assert loaded.status is Status.IN_PROGRESS


async def test_pause_and_resume_from_anywhere_fence_the_owners_writes_and_keep_its_claim(
    store: PostgresStreamStore,
) -> None:
    [stream_id] = await _insert(store, 1)
    # "a-owner" sorts first: of two idle agents it is the one that claims.
    async with agents(store, ("a-owner", 4), ("b-other", 4)) as (owner, other):
        assert await owner.claim_all() == [stream_id]
        assert await owner.write(stream_id, generation=0)
        [stream] = store.load()
        await store.save_status(replace(stream, status=Status.PAUSE))  # any core, no owner needed
        assert not await owner.write(stream_id, generation=0)  # the owner learns it changed
        assert await other.claim_all() == []  # paused: nobody runs it
        await store.save_status(replace(stream, status=Status.PENDING))
        # Resumed while its owner lives: still the owner's (it restarts the worker at the new
        # generation), never another agent's, so the camera never has two readers.
        assert await other.claim_all() == []
        assert await owner.owned() == [stream_id]
        assert await owner.write(stream_id, generation=2)
        await owner.die()
        await asyncio.sleep(TIMING.ttl + 0.5)
        assert await other.claim_all() == [stream_id]  # its owner dead: anyone may take it


async def test_a_deleted_stream_is_never_revived(store: PostgresStreamStore) -> None:
    [stream_id] = await _insert(store, 1)
    async with agents(store, ("owner", 4), ("other", 4)) as (owner, other):
        await _rounds([owner, other])
        holder = owner if await owner.owned() else other
        await holder.die()  # its owner is dead when the user deletes it
        await store.delete(stream_id)
        await asyncio.sleep(TIMING.ttl + 0.5)
        survivor = other if holder is owner else owner
        assert await survivor.claim_all() == []
        assert not await holder.write(stream_id)
        assert store.load() == []


async def test_a_drained_agent_gives_its_streams_back_at_once(store: PostgresStreamStore) -> None:
    ids = await _insert(store, 3)
    async with agents(store, ("a-leaving", 4), ("b-staying", 4)) as (leaving, staying):
        await _rounds([leaving, staying])
        assert (len(await leaving.owned()), len(await staying.owned())) == (2, 1)
        await leaving.lease.set_draining()  # SIGTERM: it takes nothing new...
        assert leaving.db is not None
        assert await claims.release(leaving.db, leaving.agent_id, leaving.incarnation) == 2  # ...gives back
        assert await leaving.owned() == []
        # No lease to wait out: the other agent takes them at once.
        assert len(await staying.claim_all()) == 2
        assert sorted(await staying.owned()) == sorted(ids)
