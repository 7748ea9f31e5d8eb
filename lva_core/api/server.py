"""The core's gRPC server: the lva.v1 services, grpc.health.v1 and server reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lva.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    analytics_pb2,
    analytics_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    streams_pb2,
    streams_pb2_grpc,
)
from lva_common.signals import stop_event
from lva_common.tls import server_credentials
from lva_core.analytics.registry import discover_analytics
from lva_core.api.interceptor import LunaErrorInterceptor
from lva_core.api.ratelimit import RateLimiter
from lva_core.api.servicers.agent import AgentServicer
from lva_core.api.servicers.analytics import AnalyticsServicer
from lva_core.api.servicers.models import ModelsServicer
from lva_core.api.servicers.streams import StreamsServicer
from lva_core.events.bus import EventBus
from lva_core.inference.service import Inference
from lva_core.metrics.collectors import serve_metrics
from lva_core.metrics.instruments import watch_event_loop
from lva_core.pipeline.routing import ModelRouter
from lva_core.pipeline.settings import StreamSettings
from lva_core.runtime.triton import TritonRuntime
from lva_core.streams.manager import StreamManager
from lva_core.streams.store.base import StoreError
from lva_core.streams.store.factory import open_store

log = logging.getLogger("lva_core")

SERVICE_NAMES = [
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    streams_pb2.DESCRIPTOR.services_by_name["StreamsService"].full_name,
    analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["ModelsService"].full_name,
]


class CoreServer:
    """Owns the gRPC server and the Triton runtime; start() then stop()."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.triton = TritonRuntime(config)
        self.inference = Inference(config)
        self.bus = EventBus(StreamSettings.from_config(config).subscriber_queue)
        self.catalogue = discover_analytics(config)
        # An unusable store stops start-up here, before any port is bound (serve() exits with 1).
        store = open_store(config)
        router = ModelRouter(config["triton"].get("models") or {}, self.inference)
        self.streams = StreamManager(config, router, self.bus, self.catalogue, store)
        self.streams.load()
        self.server = grpc.aio.server(interceptors=[LunaErrorInterceptor()])
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._triton_start: asyncio.Task[None] | None = None
        self._loop_watch: asyncio.Task[None] | None = None

    def _register(self) -> None:
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(self.config, self.triton, self.catalogue), self.server
        )
        streams = StreamsServicer(self.streams, RateLimiter.from_config(self.config))
        streams_pb2_grpc.add_StreamsServiceServicer_to_server(streams, self.server)
        analytics = AnalyticsServicer(self.catalogue, self.config["triton"].get("models") or {})
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(analytics, self.server)
        models_pb2_grpc.add_ModelsServiceServicer_to_server(
            ModelsServicer(self.inference.client), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )

    async def start(self) -> int:
        self._register()
        core = self.config["core"]
        address = f"{core['host']}:{core['port']}"
        credentials = server_credentials(core.get("tls") or {})
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        if self.port == 0:
            raise RuntimeError(f"cannot bind {core['host']}:{core['port']}")
        await self.inference.start()
        await self.server.start()
        for name in ["", *SERVICE_NAMES]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("core listening on %s:%s%s", core["host"], self.port, " (TLS)" if credentials else "")
        self.metrics_port = serve_metrics(
            core["host"], int(core.get("metrics_port", 0)), self.streams, self.bus
        )
        log.info("core metrics on http://%s:%s/metrics", core["host"], self.metrics_port)
        self._loop_watch = asyncio.create_task(watch_event_loop(), name="event-loop-lag")
        # Triton starts in the background: the API answers (and health reports) meanwhile.
        self._triton_start = asyncio.create_task(self._start_triton())
        return self.port

    async def _start_triton(self) -> None:
        await self.triton.start()
        # The streams of the last run resume once Triton is up, so that their first frames are
        # analysed rather than failed; they show pending until then.
        self.streams.resume()

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for task in (self._triton_start, self._loop_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.streams.close()
        await self.inference.close()
        await self.triton.stop()
        log.info("core stopped")


async def serve(config: dict[str, Any]) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly."""
    try:
        server = CoreServer(config)
    except StoreError as exc:
        # Running on without the store would lose every stream at the next restart: refuse.
        log.error("%s", exc)
        raise SystemExit(1) from None
    stop = stop_event()
    await server.start()
    await stop.wait()
    await server.stop()
