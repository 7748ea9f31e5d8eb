"""AgentService: version, configuration, plugins and health."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

import grpc
from google.protobuf import struct_pb2

from lva.v1 import agent_pb2, agent_pb2_grpc
from lva_common.config import mask_secrets
from lva_common.errors import BAD_QUERY, HEALTH_CHECK, LunaError
from lva_core.analytics.base import Analytic
from lva_core.plugins import discover_plugins
from lva_core.runtime.triton_health import ComponentError
from lva_core.version import API_VERSION, version_parts

Context = grpc.aio.ServicerContext[Any, Any]


class HealthSource(Protocol):
    async def health(self, timeout: float) -> list[ComponentError]: ...


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self, config: dict[str, Any], triton: HealthSource, catalogue: Mapping[str, Analytic]
    ) -> None:
        self._config = config
        self._triton = triton
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
