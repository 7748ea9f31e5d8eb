"""Who an agent is: its stable id, where it is reached, what it can run (``fleet.*``)."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AgentSpec:
    agent_id: str
    endpoint: str
    capacity: int
    analytics: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)


def agent_spec(config: Mapping[str, Any], port: int, analytics: Iterable[str]) -> AgentSpec:
    """The agent this core is, from ``fleet`` and the port it bound.

    The default id is ``<hostname>:<port>``: stable over restarts of one core, distinct for the
    cores of one machine (two agents with one id would take each other's lease in turn), and the
    pod name on Kubernetes, whose pods have the hostname of their name.
    """
    fleet = config.get("fleet") or {}
    core = config.get("core") or {}
    hostname = socket.gethostname()
    host = str(core.get("host", "127.0.0.1"))
    # A core bound to every interface is reached by its name, not by 0.0.0.0.
    reach = hostname if host in ("0.0.0.0", "::", "") else host
    return AgentSpec(
        agent_id=str(fleet.get("agent_id") or f"{hostname}:{port}"),
        endpoint=str(fleet.get("endpoint") or f"{reach}:{port}"),
        capacity=int(fleet.get("capacity", 32)),
        analytics=tuple(sorted(analytics)),
        labels={str(k): str(v) for k, v in (fleet.get("labels") or {}).items()},
    )
