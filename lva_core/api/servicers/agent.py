"""AgentService: version, configuration, plugins and health."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from lva.v1 import agent_pb2, agent_pb2_grpc
from lva_common.config import mask_secrets
from lva_common.errors import BAD_QUERY, HEALTH_CHECK, INTERNAL, LunaError
from lva_core.analytics.base import Analytic
from lva_core.fleet.directory import AgentDirectory, AgentStatus, AgentView
from lva_core.plugins import discover_plugins
from lva_core.runtime.triton_health import ComponentError
from lva_core.streams.store.base import StoreError
from lva_core.version import API_VERSION, version_parts

Context = grpc.aio.ServicerContext[Any, Any]


class HealthSource(Protocol):
    async def health(self, timeout: float) -> list[ComponentError]: ...


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        config: dict[str, Any],
        triton: HealthSource,
        catalogue: Mapping[str, Analytic],
        directory: Callable[[], AgentDirectory] | None = None,
    ) -> None:
        self._config = config
        self._triton = triton
        # Called per request: the directory exists once the core has bound its port.
        self._directory = directory
        self._versions = {name: analytic.version for name, analytic in catalogue.items()}

    async def GetVersion(
        self, request: agent_pb2.GetVersionRequest, context: Context
    ) -> agent_pb2.GetVersionResponse:
        major, minor, patch = version_parts()
        info = agent_pb2.VersionInfo(api=API_VERSION, major=major, minor=minor, patch=patch)
        return agent_pb2.GetVersionResponse(version=info)

    async def GetConfig(
        self, request: agent_pb2.GetConfigRequest, context: Context
    ) -> agent_pb2.GetConfigResponse:
        config = struct_pb2.Struct()
        config.update(mask_secrets(self._config))
        return agent_pb2.GetConfigResponse(config=config)

    async def ListPlugins(
        self, request: agent_pb2.ListPluginsRequest, context: Context
    ) -> agent_pb2.ListPluginsResponse:
        plugins = [
            agent_pb2.Plugin(
                name=p.name,
                version=p.version,
                kind=p.kind,
                enabled=p.enabled,
                distribution=p.distribution,
                entry_point=p.entry_point,
                distribution_version=p.distribution_version,
            )
            for p in discover_plugins(self._config, self._versions)
        ]
        return agent_pb2.ListPluginsResponse(plugins=plugins)

    async def CheckHealth(
        self, request: agent_pb2.CheckHealthRequest, context: Context
    ) -> agent_pb2.CheckHealthResponse:
        if request.include_luna_services not in (0, 1):
            raise LunaError(
                BAD_QUERY, f"include_luna_services must be 0 or 1, not {request.include_luna_services}"
            )
        started = time.perf_counter()
        if request.include_luna_services:
            errors = await self._triton.health(float(self._config["core"]["health_timeout"]))
            if errors:
                names = ", ".join(e.component for e in errors)
                raise LunaError(
                    HEALTH_CHECK, f"unhealthy: {names}", {"errors": [e.to_dict() for e in errors]}
                )
        return agent_pb2.CheckHealthResponse(execution_time=round(time.perf_counter() - started, 6))

    async def ListAgents(
        self, request: agent_pb2.ListAgentsRequest, context: Context
    ) -> agent_pb2.ListAgentsResponse:
        if self._directory is None:
            raise NotImplementedError
        try:
            agents = await self._directory().list()
        except (StoreError, OSError, TimeoutError) as exc:
            raise LunaError(INTERNAL, f"the fleet's store cannot be read: {exc}") from None
        return agent_pb2.ListAgentsResponse(agents=[_agent(a) for a in agents])


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


_AGENT_STATUS = {
    AgentStatus.STARTING: agent_pb2.AGENT_STATUS_STARTING,
    AgentStatus.ALIVE: agent_pb2.AGENT_STATUS_ALIVE,
    AgentStatus.DRAINING: agent_pb2.AGENT_STATUS_DRAINING,
    AgentStatus.LOST: agent_pb2.AGENT_STATUS_LOST,
    AgentStatus.STOPPED: agent_pb2.AGENT_STATUS_STOPPED,
}


def _agent(view: AgentView) -> agent_pb2.Agent:
    return agent_pb2.Agent(
        agent_id=view.spec.agent_id,
        incarnation=view.incarnation,
        endpoint=view.spec.endpoint,
        status=_AGENT_STATUS[view.status],
        capacity=view.spec.capacity,
        stream_count=view.stream_count,
        analytics=list(view.spec.analytics),
        labels=dict(view.spec.labels),
        last_renewal=_timestamp(view.last_renewal),
        started=_timestamp(view.started),
    )
