"""The streams of a fleet's agent: the shared store is the registry; this agent runs what it owns.

Any core answers any call. Create, list and get read and write the shared store; pause, resume,
retry and delete write it too (a new generation of the stream, and a ``NOTIFY``), whichever agent
runs the stream, and also while that agent is dead. Only the owner starts and stops workers, in
its **rounds**:

1. the streams it owns, as the store has them (``owned``), against the workers it runs: a worker
   whose stream is gone (deleted), taken (by another incarnation) or changed by the user (another
   generation) stops; a stream it owns that wants to run and has no worker (resumed, or a
   worker's retry) starts, up to its capacity, and what is over it is given back;
2. claims (fleet/claims.py), up to its capacity;
3. when it claimed something, a ``NOTIFY``: the other agents run a round too, and so fill up
   evenly.

A round runs on every lease renewal, on every notification (a user's change anywhere, another
agent's claims or release), and when a worker's fenced write changed nothing. Rounds never
overlap; a wake-up during one runs one more afterwards.

**Never two readers.** A stream changes hands only by a claim, and a claim needs the previous
owner's lease run out (it fenced itself by then: lease.py) or its streams released after its
workers stopped (SIGTERM). Until the round of its owner has stopped a worker the store keeps the
owner, so nobody else claims the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from lva_common.errors import invalid
from lva_core.analytics.base import Analytic
from lva_core.delivery.service import FindStream
from lva_core.events.bus import EventBus
from lva_core.metrics.instruments import FLEET_CLAIMS, FLEET_FAILOVERS, FLEET_LOSSES
from lva_core.pipeline.routing import ModelRouter
from lva_core.streams.manager import RUNNING, Located, StreamManager, lookup_ids, page_query, visible
from lva_core.streams.record import StreamRecord
from lva_core.streams.spec import StreamSpec
from lva_core.streams.state import USER_TARGETS, Status, check_transition
from lva_core.streams.store.base import StoreError
from lva_core.streams.store.postgresql import PostgresStreamStore, StoredStream

log = logging.getLogger("lva_core.fleet")

# Ended streams whose statistics an agent keeps (a single core keeps all until it restarts).
ENDED_KEPT = 1000


class FleetStreamManager(StreamManager):
    def __init__(
        self,
        config: dict[str, Any],
        router: ModelRouter,
        bus: EventBus,
        catalogue: Mapping[str, Analytic],
        store: PostgresStreamStore,
        agent_id: str,
        capacity: int,
    ) -> None:
        super().__init__(config, router, bus, catalogue, store)
        self.shared = store
        self.agent_id = agent_id
        self.capacity = capacity
        # The incarnation the rounds act for; 0 while the agent holds no lease (fenced).
        self.incarnation = 0
        self._wake = asyncio.Event()
        self._rounds: asyncio.Task[None] | None = None
        self._draining = False
        self._fencing: asyncio.Task[None] | None = None
        # Streams whose worker ended here (done, failure), for their statistics; the newest kept.
        self.ended: dict[str, StreamRecord] = {}
        # Any agent may deliver any lane of the shared outbox: the outbox's claims pick one.
        self.delivery.shared = True

    def _find_stream(self) -> FindStream:
        async def find(stream_id: str) -> StreamRecord | None:
            local = self.records.get(stream_id)
            if local is not None:
                return local
            stored = await self.shared.fetch(stream_id)
            return stored.record if stored is not None else None

        return find

    # ------------------------------------------------------------------ the agent's lease

    def start(self, incarnation: int) -> None:
        """Registered: run rounds from now on (the store's notifications included)."""
        loop = asyncio.get_running_loop()
        self.shared.on_change = lambda stream_id: loop.call_soon_threadsafe(self.wake)
        self.shared.on_lost = lambda stream_id: loop.call_soon_threadsafe(self._lost, stream_id)
        self.incarnation = incarnation
        self.shared.listen()
        self._rounds = asyncio.create_task(self._run_rounds(), name="fleet-rounds")
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def fenced(self) -> None:
        """The lease is lost: every worker stops now, before any other agent may claim."""
        self.incarnation = 0
        if self.workers:
            log.error("lease lost: stopping %d streams", len(self.workers))
        self._fencing = asyncio.create_task(self._drop_all("lease lost"))

    async def _drop_all(self, why: str) -> None:
        for stream_id in list(self.records):
            await self._drop(stream_id, why)

    def registered(self, incarnation: int) -> None:
        self.incarnation = incarnation
        self.wake()

    def _lost(self, stream_id: str) -> None:
        # A fenced write changed nothing: taken, changed by the user, or deleted. The round
        # tells which and acts; the worker's frames meanwhile are its owner's still.
        if stream_id in self.records:
            FLEET_LOSSES.inc()
            self.wake()

    # ------------------------------------------------------------------ rounds

    async def _run_rounds(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._round()
            except StoreError as exc:
                log.warning("fleet round: %s", exc)
            except Exception:
                log.exception("fleet round failed")

    async def _round(self) -> None:
        incarnation = self.incarnation
        if incarnation == 0 or self._draining:
            return
        owned = {o.stream_id: o for o in await self.shared.owned(self.agent_id, incarnation)}
        if incarnation != self.incarnation:
            return  # fenced while the store answered
        for stream_id, record in list(self.records.items()):
            row = owned.get(stream_id)
            mine = record.owner
            if row is None or mine is None or mine.incarnation != incarnation:
                await self._drop(stream_id, "no longer owned")
            elif row.generation != mine.generation:
                await self._drop(stream_id, "changed by the user")
            elif not record.status.active and row.status is record.status:
                # The worker ended (done, failure) and the store has its last status: nothing
                # left to run here; the stream stays owned (its owner's lease says who ran it).
                # Its statistics stay readable here, as a single core keeps them.
                await self._drop(stream_id, f"ended ({record.status.value})")
                self._remember_ended(record)
        starting = [
            stream_id
            for stream_id, row in owned.items()
            if row.status.active and stream_id not in self.records
        ]
        room = self.capacity - sum(1 for r in self.records.values() if r.status.active)
        if len(starting) > max(room, 0):
            over = starting[max(room, 0) :]
            starting = starting[: max(room, 0)]
            await self.shared.release(self.agent_id, incarnation, over)
            log.info("over capacity: gave %d streams back", len(over))
        claimed: list[str] = []
        if room - len(starting) > 0:
            taken = await self.shared.claim(self.agent_id, incarnation, time.time(), room - len(starting))
            claimed = [stream_id for stream_id, _ in taken]
            takeovers = sum(1 for _, previous in taken if previous and previous != self.agent_id)
            if claimed:
                FLEET_CLAIMS.inc(len(claimed))
                FLEET_FAILOVERS.inc(takeovers)
                log.info("claimed %d streams (%d from other agents)", len(claimed), takeovers)
        if starting or claimed:
            for stored in await self.shared.fetch_many([*starting, *claimed]):
                self._run_here(stored, incarnation)
        if claimed:
            await self.shared.nudge()  # the others' turn: they fill up evenly

    def _run_here(self, stored: StoredStream, incarnation: int) -> None:
        record = stored.record
        owner = record.owner
        if (
            incarnation != self.incarnation
            or owner is None
            or (owner.agent_id, owner.incarnation) != (self.agent_id, incarnation)
            or not record.status.active
            or record.stream_id in self.records
        ):
            return
        missing = [spec.name for spec in record.analytics if spec.name not in self.catalogue]
        if missing:  # the claim checks the analytics; a plugin disabled since would be caught here
            log.error("stream %s needs analytic %s, which this core lacks", record.stream_id, missing[0])
            return
        if record.status is not Status.PENDING:
            record.status, record.error = Status.PENDING, None  # a retry of the user's: starts over
        self.records[record.stream_id] = record
        self._start_worker(record)
        log.info("stream %s runs here (generation %d)", record.stream_id, owner.generation)

    def _remember_ended(self, record: StreamRecord) -> None:
        self.ended[record.stream_id] = record
        while len(self.ended) > ENDED_KEPT:
            del self.ended[next(iter(self.ended))]

    async def _drop(self, stream_id: str, why: str) -> None:
        self.ended.pop(stream_id, None)
        record = self.records.pop(stream_id, None)
        await self._stop_worker(stream_id)
        if record is not None:
            log.info("stream %s stopped here: %s", stream_id, why)
            # Watchers here re-read the store and follow the stream (api/follow.py).
            self.bus.close_stream(stream_id)

    # ------------------------------------------------------------------ the API, on any core

    async def _stored(self, stream_id: str, account_id: str) -> StoredStream:
        stream_id, account_id = lookup_ids(stream_id, account_id)
        stored = await self._persist(self.shared.fetch(stream_id))
        visible(stored.record if stored is not None else None, stream_id, account_id)
        assert stored is not None  # visible() raised otherwise
        return stored

    async def create(self, spec: StreamSpec) -> StreamRecord:
        record = self._new_record(spec)
        await self._check_callback_hosts(record)
        await self._persist(self.store.insert(record))  # and a notification: someone claims it
        log.info("stream %s created (%s)", record.stream_id, record.status.value)
        return record

    async def locate(self, stream_id: str, account_id: str = "") -> Located:
        stored = await self._stored(stream_id, account_id)
        local = self.records.get(stored.record.stream_id)
        if local is not None:
            return Located(local, local=True)
        ended = self.ended.get(stored.record.stream_id)
        if ended is not None and ended.owner == stored.record.owner:
            stored.record.statistics = ended.statistics  # the run's counts, not zeros
        _hide_dead_owner(stored)
        return Located(
            stored.record, local=False, endpoint=stored.owner_endpoint if stored.owner_alive else ""
        )

    async def get(self, stream_id: str, account_id: str = "") -> StreamRecord:
        return (await self.locate(stream_id, account_id)).record

    async def list(
        self, account_id: str, status: Status | None, page: int, page_size: int
    ) -> tuple[list[StreamRecord], int]:
        account_id, page, page_size = page_query(account_id, page, page_size)
        stored, count = await self._persist(
            self.shared.fetch_page(account_id, status, (page - 1) * page_size, page_size)
        )
        # The ones running here with their live statistics; the others as stored.
        for each in stored:
            _hide_dead_owner(each)
        return [self.records.get(s.record.stream_id, s.record) for s in stored], count

    async def update(self, stream_id: str, target: Status, account_id: str = "") -> StreamRecord:
        stored = await self._stored(stream_id, account_id)
        record = stored.record
        if target not in USER_TARGETS:
            raise invalid("status", "must be pause or pending")
        if record.status is target or (target is Status.PENDING and record.status in RUNNING):
            return self.records.get(record.stream_id, record)
        check_transition(record.status, target)
        record.transition(target, None)
        # A new generation: its owner stops (pause) or restarts (resume, retry) the worker in
        # its next round, woken by the notification; with no live owner, anyone may claim it.
        await self._persist(self.store.save_status(record))
        if record.stream_id in self.records:
            self.wake()
        log.info("stream %s -> %s (asked here)", record.stream_id, target.value)
        _hide_dead_owner(stored)
        return record

    async def delete(self, stream_id: str, account_id: str = "") -> None:
        stored = await self._stored(stream_id, account_id)
        stream_id = stored.record.stream_id
        await self._persist(self.store.delete(stream_id))  # its owner is told and stops it
        if stream_id in self.records:
            await self._drop(stream_id, "deleted")
        await self.delivery.forget(stream_id)  # the shared outbox's rows; other agents' lanes idle
        log.info("stream %s deleted", stream_id)

    # ------------------------------------------------------------------ leaving

    def load(self) -> None:
        log.info("stream store %s: shared by the fleet; this agent runs what it claims", self.store.location)

    def resume(self) -> None:
        self.wake()  # Triton is up: the rounds may start workers now

    async def drain(self) -> None:
        """SIGTERM: stop every worker, then give the streams back for others to claim at once.
        Once: close() after stop() finds it done."""
        if self._draining:
            return
        self._draining = True
        await self._stop_rounds()
        await self._drop_all("draining")
        if self.incarnation:
            try:
                released = await self.shared.release(self.agent_id, self.incarnation)
                await self.shared.nudge()
                log.info("drained: gave %d streams back", released)
            except StoreError as exc:  # they are claimed once the lease has run out instead
                log.warning("drain: could not give the streams back: %s", exc)

    async def _stop_rounds(self) -> None:
        if self._rounds is not None:
            self._rounds.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rounds
            self._rounds = None

    async def close(self) -> None:
        await self.drain()
        await self.delivery.close()  # what is still pending stays in the shared outbox
        await self.store.close()


def _hide_dead_owner(stored: StoredStream) -> None:
    """A stream's ``agent_id`` names a live agent only: a dead one runs nothing."""
    if not stored.owner_alive:
        stored.record.owner = None
