"""The core's gRPC server: the lva.v1 services, grpc.health.v1 and server reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lva.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    analytics_pb2,
    analytics_pb2_grpc,
    images_pb2,
    images_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    streams_pb2,
    streams_pb2_grpc,
)
from lva_common.config import ConfigError
from lva_common.signals import stop_event
from lva_common.tls import peer_credentials, server_credentials
from lva_core.analytics.registry import discover_analytics
from lva_core.api.follow import Peers
from lva_core.api.interceptor import LunaErrorInterceptor
from lva_core.api.ratelimit import RateLimiter
from lva_core.api.servicers.agent import AgentServicer
from lva_core.api.servicers.analytics import AnalyticsServicer
from lva_core.api.servicers.images import ImagesServicer
from lva_core.api.servicers.models import ModelsServicer
from lva_core.api.servicers.streams import StreamsServicer
from lva_core.events.bus import EventBus
from lva_core.fleet.directory import AgentDirectory, AgentStatus, LocalDirectory
from lva_core.fleet.identity import agent_spec
from lva_core.fleet.lease import FleetConfigError, lease_timing
from lva_core.images.store import ImageStoreError, open_image_store
from lva_core.inference.service import Inference
from lva_core.metrics.collectors import serve_metrics
from lva_core.metrics.instruments import watch_event_loop
from lva_core.pipeline.routing import ModelRouter
from lva_core.pipeline.settings import StreamSettings
from lva_core.runtime.triton import TritonRuntime
from lva_core.streams.manager import StreamManager
from lva_core.streams.store.base import StoreError

if TYPE_CHECKING:
    from lva_core.fleet.fleet_streams import FleetStreamManager
from lva_core.streams.store.factory import POSTGRES_SCHEMES, open_store, store_url

log = logging.getLogger("lva_core")

SERVICE_NAMES = [
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    streams_pb2.DESCRIPTOR.services_by_name["StreamsService"].full_name,
    analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["ModelsService"].full_name,
    images_pb2.DESCRIPTOR.services_by_name["ImagesService"].full_name,
]


# Facades and other agents ping every 5 s to find a core that hangs (lva_facade/transcoder.py);
# gRPC's default would answer pings that frequent with GOAWAY (too_many_pings).
SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 4000),
    ("grpc.http2.max_pings_without_data", 0),
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
        # Event images (images.*); None when images.path is empty. An unusable directory stops
        # start-up too.
        self.images = open_image_store(config)
        router = ModelRouter(config["triton"].get("models") or {}, self.inference)
        self.streams: StreamManager
        self.fleet: FleetStreamManager | None = None
        if store_url(config).lower().startswith(POSTGRES_SCHEMES):
            # A fleet's agent: the store is shared, this core runs the streams it claims.
            from lva_core.fleet.fleet_streams import FleetStreamManager

            capacity = int((config.get("fleet") or {}).get("capacity", 32))
            self.fleet = FleetStreamManager(config, router, self.bus, self.catalogue, store, "", capacity)  # type: ignore[arg-type]
            self.streams = self.fleet
        else:
            self.streams = StreamManager(config, router, self.bus, self.catalogue, store)
        # The workers store their events' images here before publishing them.
        self.streams.images = self.images
        self.streams.load()
        self.server = grpc.aio.server(interceptors=[LunaErrorInterceptor()], options=SERVER_OPTIONS)
        self.health = health.aio.HealthServicer()
        self.port = 0
        # Checked before any port is bound: timings that could not renew in time refuse to start.
        self.lease_timing = lease_timing(config)
        self.peers: Peers | None = None
        if self.fleet is not None:
            tls = config["core"].get("tls") or {}
            try:
                credentials = peer_credentials(
                    tls, str((config.get("fleet") or {}).get("peer_ca_file") or "")
                )
            except (ValueError, OSError) as exc:
                raise FleetConfigError(str(exc)) from None
            self.peers = Peers(credentials)
        self.directory: AgentDirectory = LocalDirectory(
            agent_spec(config, int(config["core"]["port"]), self.catalogue), self._stream_count
        )
        self._triton_start: asyncio.Task[None] | None = None
        self._loop_watch: asyncio.Task[None] | None = None

    def _register(self) -> None:
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(self.config, self.triton, self.catalogue, lambda: self.directory), self.server
        )
        streams = StreamsServicer(self.streams, RateLimiter.from_config(self.config), self.peers)
        self.streams_servicer = streams
        streams_pb2_grpc.add_StreamsServiceServicer_to_server(streams, self.server)
        analytics = AnalyticsServicer(
            self.catalogue, self.config["triton"].get("models") or {}, self.streams.sinks
        )
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(analytics, self.server)
        models_pb2_grpc.add_ModelsServiceServicer_to_server(
            ModelsServicer(self.inference.client), self.server
        )
        images = ImagesServicer(self.images, self.peers, self._other_agents)
        images_pb2_grpc.add_ImagesServiceServicer_to_server(images, self.server)
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
        if self.images is not None:
            await self.images.start()
        await self.server.start()
        for name in ["", *SERVICE_NAMES]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("core listening on %s:%s%s", core["host"], self.port, " (TLS)" if credentials else "")
        await self._join_fleet()
        # Receivers do not wait for Triton: a previous run's undelivered events go out now.
        await self.streams.start_delivery()
        self.metrics_port = serve_metrics(
            core["host"], int(core.get("metrics_port", 0)), self.streams, self.bus
        )
        log.info("core metrics on http://%s:%s/metrics", core["host"], self.metrics_port)
        self._loop_watch = asyncio.create_task(watch_event_loop(), name="event-loop-lag")
        # Triton starts in the background: the API answers (and health reports) meanwhile.
        self._triton_start = asyncio.create_task(self._start_triton())
        return self.port

    async def _other_agents(self) -> list[str]:
        """The endpoints of the fleet's other running agents (for images kept there)."""
        own = self.streams_servicer.own_endpoint
        running = (AgentStatus.STARTING, AgentStatus.ALIVE, AgentStatus.DRAINING)
        return [
            view.spec.endpoint
            for view in await self.directory.list()
            if view.status in running and view.spec.endpoint and view.spec.endpoint != own
        ]

    def _stream_count(self) -> int:
        return len(self.streams.workers)

    async def _join_fleet(self) -> None:
        """Register as an agent of the fleet when the store is shared (PostgreSQL): ``starting``
        until its Triton is up (_start_triton), then ``alive``, claiming streams."""
        spec = agent_spec(self.config, self.port, self.catalogue)
        fleet = self.fleet
        self.streams.agent_id = spec.agent_id
        if fleet is None:
            self.directory = LocalDirectory(spec, self._stream_count)
            return
        # Imported here: a single-node core never loads the database client.
        from lva_core.fleet.postgres_agents import PostgresAgents

        loop = asyncio.get_running_loop()
        agents = PostgresAgents(
            store_url(self.config),
            spec,
            self.lease_timing,
            self._stream_count,
            on_fenced=lambda: loop.call_soon_threadsafe(fleet.fenced),
            on_registered=lambda n: loop.call_soon_threadsafe(self._registered, n),
            on_renewed=lambda: loop.call_soon_threadsafe(fleet.wake),
        )
        incarnation = await loop.run_in_executor(None, agents.start)
        self.directory = agents
        self.streams_servicer.own_endpoint = spec.endpoint
        fleet.agent_id = spec.agent_id
        fleet.gate = agents.may_run
        fleet.start(incarnation)

    def _registered(self, incarnation: int) -> None:
        log.info("registered again as incarnation %d", incarnation)
        if self.fleet is not None:
            self.fleet.registered(incarnation)

    async def _start_triton(self) -> None:
        await self.triton.start()
        # The streams of the last run resume once Triton is up, so that their first frames are
        # analysed rather than failed; they show pending until then. A fleet's agent starts
        # claiming now (until then others claim without waiting for it).
        await self.directory.set_alive()
        self.streams.resume()

    async def stop(self, grace: float = 5.0) -> None:
        with contextlib.suppress(Exception):  # shown while the workers stop; best effort
            await self.directory.set_draining()
        # A fleet's agent hands its streams over first: the others claim them at once, while
        # this core still answers the calls in flight for the grace below.
        await self.streams.drain()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for task in (self._triton_start, self._loop_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.streams.close()
        if self.images is not None:
            await self.images.close()
        if self.peers is not None:
            await self.peers.close()
        await self.directory.close()
        await self.inference.close()
        await self.triton.stop()
        log.info("core stopped")


async def serve(config: dict[str, Any]) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly."""
    try:
        server = CoreServer(config)
    except (StoreError, ConfigError, ImageStoreError) as exc:
        # Running on without the store would lose every stream at the next restart: refuse.
        log.error("%s", exc)
        raise SystemExit(1) from None
    stop = stop_event()
    try:
        await server.start()
    except StoreError as exc:  # the fleet's registration: the same refusal as the store's
        log.error("%s", exc)
        await server.stop(grace=0)
        raise SystemExit(1) from None
    await stop.wait()
    await server.stop()
