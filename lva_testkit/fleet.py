"""A fleet on one machine for tests and benchmarks: N real cores on one PostgreSQL database and
one Triton, a facade over all of them, and what the tests ask of them.

Each core is a real ``python -m lva_core`` process with the fleet's short test timings (renew
0.5 s, TTL 3 s, margin 1 s unless given), so that a killed agent's streams move within seconds.
The fleet is inspected through the database itself (who owns what, as the claims see it), never
through the cores' own word.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from lva_testkit.stack import Service, start_core, start_facade

ACTIVE = ("pending", "in_progress", "restart")
PROBE = [{"analytic_name": "pipeline_probe"}]

# Each stream with the agent whose live incarnation owns it (NULL: none) and its stored status.
OWNERS = """
SELECT s.stream_id, s.status, a.agent_id AS live_owner
FROM streams s LEFT JOIN agents a
  ON a.agent_id = s.owner_id AND a.incarnation = s.owner_incarnation
 AND a.status IN ('alive', 'draining') AND a.lease_expires > now()
"""


def camera_stream(url: str, name: str = "fleet camera") -> dict[str, object]:
    """A live camera as the fleet's tests and benchmarks run it: every 5th frame into the cheap
    pipeline_probe, restarted by the agent whenever the camera drops."""
    return {
        "name": name,
        "data": {
            "reference": url,
            "type": "stream",
            "frame_processing": {"rate": {"period": 5, "unit": "frame"}},
        },
        "analytics": PROBE,
        "autorestart": {"restart": 1, "attempt_count": 100, "delay": 0.5},
    }


@dataclass(frozen=True)
class Timing:
    renew: float = 0.5
    ttl: float = 3.0
    margin: float = 1.0


@dataclass
class Fleet:
    log_dir: Path
    triton_url: str
    database: str  # postgresql:// URL
    timing: Timing = field(default_factory=Timing)
    cores: dict[str, Service] = field(default_factory=dict)
    facade: Service | None = None

    def env(self, agent_id: str, capacity: int, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            "LVA_STREAMS__STORE": self.database,
            "LVA_FLEET__AGENT_ID": agent_id,
            "LVA_FLEET__CAPACITY": str(capacity),
            "LVA_FLEET__RENEW_INTERVAL": str(self.timing.renew),
            "LVA_FLEET__LEASE_TTL": str(self.timing.ttl),
            "LVA_FLEET__FENCE_MARGIN": str(self.timing.margin),
            # A test's camera loses no frames to a slow sample; the probe is cheap for Triton.
            "LVA_STREAMS__OPEN_TIMEOUT": "5",
            **(extra or {}),
        }

    def start_core(self, agent_id: str, capacity: int = 32, extra: dict[str, str] | None = None) -> Service:
        core = start_core(self.log_dir, self.triton_url, self.env(agent_id, capacity, extra))
        self.cores[agent_id] = core
        return core

    def start_facade(self, env: dict[str, str] | None = None) -> Service:
        addresses = ",".join(core.address for core in self.cores.values())
        # The dead cores' addresses stay in the list, as a Deployment's do until it is changed.
        self.facade = start_facade(
            self.log_dir, addresses, {"LVA_FACADE__WS_RESUME_TIMEOUT": "30", **(env or {})}
        )
        return self.facade

    def kill(self, agent_id: str) -> None:
        self.cores[agent_id].stop(signal.SIGKILL)

    def drain(self, agent_id: str) -> None:
        """SIGTERM, as Kubernetes' preStop and termination do; returns once the process exited."""
        self.cores[agent_id].stop(signal.SIGTERM)

    def freeze(self, agent_id: str) -> None:
        self.cores[agent_id].proc.send_signal(signal.SIGSTOP)

    def thaw(self, agent_id: str) -> None:
        self.cores[agent_id].proc.send_signal(signal.SIGCONT)

    def alive(self) -> list[str]:
        return [agent_id for agent_id, core in self.cores.items() if core.proc.poll() is None]

    def stop(self) -> None:
        if self.facade is not None:
            self.facade.stop()
        for core in self.cores.values():
            if core.proc.poll() is None:
                core.proc.send_signal(signal.SIGCONT)  # a frozen core cannot take its SIGTERM
            core.stop()

    # ------------------------------------------------------------------ the database's view

    async def owners(self) -> Owners:
        """stream_id -> (the agent whose live incarnation owns it, or None; the stored status)."""
        db = await asyncpg.connect(self.database)
        try:
            rows = await db.fetch(OWNERS)
        finally:
            await db.close()
        return {r["stream_id"]: (r["live_owner"], r["status"]) for r in rows}

    async def wait_for(
        self, predicate: Callable[[Owners], bool], timeout: float, what: str, interval: float = 0.2
    ) -> Owners:
        """Poll owners() until ``predicate(owners)`` holds; the owners then. TimeoutError otherwise."""
        return await wait_owners(self.owners, predicate, timeout, what, interval)

    async def wait_log(self, agent_id: str, text: str, timeout: float = 20) -> None:
        """Until the core's log holds ``text`` (a state the core reports only there)."""
        deadline = time.monotonic() + timeout
        while text not in self.cores[agent_id].log_text():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{agent_id} did not log {text!r} within {timeout} s")
            await asyncio.sleep(0.2)


Owners = dict[str, tuple[str | None, str]]


async def wait_owners(
    read: Callable[[], Awaitable[Owners]],
    predicate: Callable[[Owners], bool],
    timeout: float,
    what: str,
    interval: float = 0.2,
    describe: Callable[[Owners], object] = lambda owners: owners,
) -> Owners:
    """Poll ``read()`` (the owners, however read) until ``predicate`` holds; TimeoutError with
    ``describe(owners)`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        owners = await read()
        if predicate(owners):
            return owners
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s; owners {describe(owners)}")
        await asyncio.sleep(interval)
