"""The fleet as the API shows it (``ListAgents``), behind one interface whatever the store.

A core on SQLite is a fleet of one: :class:`LocalDirectory` lists it, always alive. A core on
PostgreSQL lists every agent registered there (``postgres_agents.py``).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lva_core.fleet.identity import AgentSpec


class AgentStatus(enum.Enum):
    # Registered, not claiming yet: its Triton is starting (no claim waits for it meanwhile).
    STARTING = "starting"
    ALIVE = "alive"
    DRAINING = "draining"
    LOST = "lost"
    STOPPED = "stopped"


@dataclass(frozen=True)
class AgentView:
    spec: AgentSpec
    incarnation: int
    status: AgentStatus
    stream_count: int
    last_renewal: float  # seconds since the epoch
    started: float


class AgentDirectory(Protocol):
    async def list(self) -> list[AgentView]: ...

    async def set_alive(self) -> None:
        """Ready to run streams (its Triton is up): from now on it claims."""
        ...

    async def set_draining(self) -> None:
        """Shown as draining while the core stops its workers (SIGTERM)."""
        ...

    async def close(self) -> None:
        """Leave the fleet cleanly (status stopped); idempotent."""
        ...


class LocalDirectory:
    """A core on its own store: the fleet is this core."""

    def __init__(self, spec: AgentSpec, stream_count: Callable[[], int]) -> None:
        self.spec = spec
        self._stream_count = stream_count
        self._started = time.time()

    async def list(self) -> list[AgentView]:
        now = time.time()
        return [AgentView(self.spec, 0, AgentStatus.ALIVE, self._stream_count(), now, self._started)]

    async def set_alive(self) -> None:
        return None

    async def set_draining(self) -> None:
        return None

    async def close(self) -> None:
        return None
