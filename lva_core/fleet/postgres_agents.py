"""An agent's registration and lease in PostgreSQL, and the fleet as the ``agents`` table holds it.

**Registration** takes a fresh incarnation from the ``agent_incarnations`` sequence: the fencing
token of this start. A row with the same ``agent_id`` (the same pod, restarted) is taken over.

**Renewal**, every ``renew_interval``: ``UPDATE ... WHERE agent_id = $1 AND incarnation = $2``,
which extends the lease to the database's ``now() + ttl``. No row changed means another start
of this agent took the id over: this incarnation is finished.

**Self-fencing.** When renewals fail (the database or the network is down, or this process was
frozen) until ``ttl - margin`` after the last good one was sent (lease.py), ``on_fenced`` is
called: the agent must stop reading its streams, before any other agent may claim them. Once
the database answers again the agent registers anew, with a new incarnation, and
``on_registered`` tells it so.

All of it runs on a loop and a connection of its own (runtime/background_loop.py): a lease must
not wait behind frame work or behind the stream store's queue of writes. The callbacks are
called on that loop's thread; they must be thread-safe.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from lva_common.config import mask_url
from lva_core.fleet.directory import AgentStatus, AgentView
from lva_core.fleet.identity import AgentSpec
from lva_core.fleet.lease import Lease, LeaseTiming
from lva_core.metrics.instruments import LEASE_LOST, LEASE_RENEW, REGISTRATIONS
from lva_core.runtime.background_loop import BackgroundLoop
from lva_core.streams.store.base import StoreError

log = logging.getLogger("lva_core.fleet")

_REGISTER = """
INSERT INTO agents (agent_id, incarnation, endpoint, capacity, analytics, labels, status,
                    stream_count, started_at, renewed_at, lease_expires)
VALUES ($1, nextval('agent_incarnations'), $2, $3, $4, $5, $8, $6, now(), now(),
        now() + make_interval(secs => $7))
ON CONFLICT (agent_id) DO UPDATE SET
    incarnation = EXCLUDED.incarnation, endpoint = EXCLUDED.endpoint,
    capacity = EXCLUDED.capacity, analytics = EXCLUDED.analytics, labels = EXCLUDED.labels,
    status = EXCLUDED.status, stream_count = EXCLUDED.stream_count, started_at = now(),
    renewed_at = now(), lease_expires = EXCLUDED.lease_expires
RETURNING incarnation
"""
_RENEW = """
UPDATE agents SET renewed_at = now(), lease_expires = now() + make_interval(secs => $3),
                  stream_count = $4
WHERE agent_id = $1 AND incarnation = $2 AND status IN ('starting', 'alive', 'draining')
  AND lease_expires > now()
"""
_SET_STATUS = "UPDATE agents SET status = $3 WHERE agent_id = $1 AND incarnation = $2"
_LEAVE = """
UPDATE agents SET status = 'stopped', stream_count = 0, lease_expires = now()
WHERE agent_id = $1 AND incarnation = $2
"""
_LIST = """
SELECT agent_id, incarnation, endpoint, capacity, analytics, labels, stream_count,
       CASE WHEN status IN ('starting', 'alive', 'draining') AND lease_expires < now() THEN 'lost'
            ELSE status END AS status,
       extract(epoch FROM renewed_at) AS renewed, extract(epoch FROM started_at) AS started
FROM agents ORDER BY agent_id
"""
_LOST_CONNECTION = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # A connection the server ended while it was idle (a restart) can be left waiting for the
    # end of that error: "cannot switch to state 12; another operation (2) is in progress".
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


# Seconds between two attempts after a failed one: an overdue renewal is due at once, and a
# database that refuses at once (restarting) must not be asked thousands of times a second.
RETRY_PAUSE = 0.1


class PostgresAgents:
    """This agent's lease, kept from :meth:`start` to :meth:`close`, and the fleet's list."""

    def __init__(
        self,
        url: str,
        spec: AgentSpec,
        timing: LeaseTiming,
        stream_count: Callable[[], int],
        on_fenced: Callable[[], object] = lambda: None,
        on_registered: Callable[[int], object] = lambda incarnation: None,
        on_renewed: Callable[[], object] = lambda: None,
        connect_timeout: float = 5.0,
        registered_as: AgentStatus = AgentStatus.STARTING,
    ) -> None:
        self.url = url
        self.spec = spec
        self.timing = timing
        self._location = mask_url(url)
        self._stream_count = stream_count
        self._on_fenced = on_fenced
        self._on_registered = on_registered
        self._on_renewed = on_renewed
        self._connect_timeout = connect_timeout
        self.lease = Lease(timing)
        # starting until set_alive(): a re-registration after a fence comes back as it was.
        self._status_at_registration = registered_as
        self.incarnation = 0
        self.fenced = False
        self._db: asyncpg.Connection | None = None
        self._lock: asyncio.Lock | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._closing = False
        self._background = BackgroundLoop(f"agent-lease-{spec.agent_id}")

    # ------------------------------------------------------------------ from the core

    def start(self) -> int:
        """Register (blocking: start-up); the incarnation. StoreError when the database refuses."""
        try:
            return self._background.call(self._start())
        except BaseException:
            self._background.stop()
            raise

    def may_run(self) -> bool:
        """Whether this agent's lease still lets it read its streams, by its own clock: the
        workers' per-frame gate (any thread), so that a process woken after its TTL reads no
        further frame before its fence is noticed."""
        return not self.fenced and self.lease.valid(time.monotonic())

    async def list(self) -> list[AgentView]:
        return await self._background.run(self._list())

    async def close(self) -> None:
        """Leave the fleet: status stopped, lease ended at once; idempotent."""
        if self._closing:
            return
        self._closing = True
        try:
            await self._background.run(self._leave())
        except Exception as exc:  # the lease then simply runs out
            log.warning("agent %s: could not leave the fleet cleanly: %s", self.spec.agent_id, exc)
        await asyncio.get_running_loop().run_in_executor(None, self._background.stop)

    async def set_alive(self) -> None:
        """Ready to run streams: other agents' claims count it from now on, and it claims."""
        self._status_at_registration = AgentStatus.ALIVE
        await self._background.run(self._status(AgentStatus.ALIVE))

    async def set_draining(self) -> None:
        """SIGTERM: shown as draining while the workers stop."""
        self._status_at_registration = AgentStatus.DRAINING
        await self._background.run(self._status(AgentStatus.DRAINING))

    # ------------------------------------------------------------------ on the lease loop

    async def _start(self) -> int:
        self._lock = asyncio.Lock()
        try:
            await self._register()
        except _LOST_CONNECTION as exc:
            raise StoreError(
                f"cannot register agent {self.spec.agent_id} at {self._location}: {exc}"
            ) from None
        except asyncpg.PostgresError as exc:
            raise StoreError(
                f"cannot register agent {self.spec.agent_id} at {self._location}: {exc}"
            ) from None
        self._keeper = asyncio.create_task(self._keep())
        return self.incarnation

    async def _connection(self) -> asyncpg.Connection:
        if self._db is None or self._db.is_closed():
            self._db = await asyncpg.connect(self.url, timeout=self._connect_timeout)
        return self._db

    def _drop_connection(self) -> None:
        if self._db is not None:
            with contextlib.suppress(Exception):  # it is being thrown away either way
                self._db.terminate()
        self._db = None

    async def _register(self) -> None:
        assert self._lock is not None
        sent = time.monotonic()
        async with self._lock:
            db = await self._connection()
            incarnation = await db.fetchval(
                _REGISTER,
                self.spec.agent_id,
                self.spec.endpoint,
                self.spec.capacity,
                list(self.spec.analytics),
                json.dumps(dict(self.spec.labels), sort_keys=True),
                self._stream_count(),
                self.timing.ttl,
                self._status_at_registration.value,
                timeout=self.timing.renew_interval,
            )
        self.incarnation = int(incarnation)
        self.lease.renewed(sent)
        self.fenced = False
        REGISTRATIONS.inc()
        log.info("agent %s registered, incarnation %d", self.spec.agent_id, self.incarnation)

    async def _renew(self) -> bool:
        """One renewal; False when this incarnation was taken over or its lease ran out (a frozen
        process, woken after its TTL: others may hold its streams by now). Raises on a lost
        connection."""
        assert self._lock is not None
        sent = time.monotonic()
        async with self._lock:
            db = await self._connection()
            result = await db.execute(
                _RENEW, self.spec.agent_id, self.incarnation, self.timing.ttl, self._stream_count()
            )
        LEASE_RENEW.observe(time.monotonic() - sent)
        if result.endswith(" 0"):
            return False
        self.lease.renewed(sent)
        self._on_renewed()
        return True

    def _fence(self, why: str) -> None:
        if self.fenced:
            return
        self.fenced = True
        self.lease.drop()
        LEASE_LOST.inc()
        log.error("agent %s: lease lost (%s); stopping its workers", self.spec.agent_id, why)
        self._on_fenced()

    async def _keep(self) -> None:
        """Renew until closed; fence on time; register anew once the database answers again.

        Nothing but cancellation ends this loop: a keeper that died would leave the agent
        running its streams until its own clock fenced them, and never registering again."""
        failed = False
        while not self._closing:
            now = time.monotonic()
            if self.lease.held:
                wait = max(0.0, self.lease.next_renewal(now) - now)
                if failed:  # an overdue renewal is due at once: retry, but not in a tight loop
                    wait = max(wait, min(RETRY_PAUSE, self.timing.renew_interval))
                await asyncio.sleep(wait)
            else:
                await asyncio.sleep(self.timing.renew_interval)
            if self._closing:
                return
            # Every attempt, its connection included, ends by the fence time: a database that
            # accepts and never answers must not keep the agent from fencing.
            now = time.monotonic()
            held = self.lease.held
            budget = self.lease.fence_at() - now if held else self.timing.ttl - self.timing.margin
            try:
                async with asyncio.timeout(max(0.05, budget)):
                    if self.fenced:
                        await self._register()
                        self._on_registered(self.incarnation)
                    elif not await self._renew():
                        self._fence(f"incarnation {self.incarnation} was taken over or its lease ran out")
            except Exception as exc:  # whatever it was: a new connection next time, never a dead keeper
                failed = True
                self._drop_connection()
                if isinstance(exc, (*_LOST_CONNECTION, asyncpg.PostgresError)):
                    why = str(exc) or type(exc).__name__
                    log.warning("agent %s: lease renewal failed: %s", self.spec.agent_id, why)
                else:  # a driver's surprise: its traceback, once per failure
                    log.exception("agent %s: lease renewal failed", self.spec.agent_id)
            else:
                failed = False
            if self.lease.must_fence(time.monotonic()):
                self._fence(f"no renewal for {self.timing.ttl - self.timing.margin:.1f} s")

    async def _status(self, status: AgentStatus) -> None:
        assert self._lock is not None
        async with self._lock:
            db = await self._connection()
            await db.execute(_SET_STATUS, self.spec.agent_id, self.incarnation, status.value, timeout=5)

    async def _leave(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        assert self._lock is not None
        try:
            async with self._lock:
                db = await self._connection()
                await db.execute(_LEAVE, self.spec.agent_id, self.incarnation, timeout=5)
                log.info("agent %s left the fleet", self.spec.agent_id)
        finally:
            if self._db is not None and not self._db.is_closed():
                await self._db.close(timeout=5)

    async def _list(self) -> builtins.list[AgentView]:
        assert self._lock is not None
        async with self._lock:
            db = await self._connection()
            rows = await db.fetch(_LIST, timeout=5)
        return [_view(row) for row in rows]


def _view(row: Any) -> AgentView:
    spec = AgentSpec(
        agent_id=row["agent_id"],
        endpoint=row["endpoint"],
        capacity=int(row["capacity"]),
        analytics=tuple(row["analytics"]),
        labels=json.loads(row["labels"]),
    )
    return AgentView(
        spec=spec,
        incarnation=int(row["incarnation"]),
        status=AgentStatus(row["status"]),
        stream_count=int(row["stream_count"]),
        last_renewal=float(row["renewed"]),
        started=float(row["started"]),
    )
