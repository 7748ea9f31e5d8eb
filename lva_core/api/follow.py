"""A fleet's watch and live statistics from any core: relayed from the agent that runs the stream.

**GetStream** on a core that does not run the stream asks its owner (a short deadline) for the
live record, and answers with the stored one when the owner does not answer in time.

**WatchStream** on any core :func:`follow` s the stream wherever it runs: from the local event
bus when it runs here, relayed from its owner's WatchStream otherwise, and when the owner
changes (it died, drained, or the user paused and resumed the stream) to the next one, on the
same call. Between owners the watcher sees the stream's status as the store has it; a stream
whose owner stopped answering shows ``restart``, so that a client sees ``restart``, ``pending``,
``in_progress`` and then events again across a failover. Status messages that repeat the last
one (each new source starts with the current status) are not sent twice.

A relayed call carries the ``lva-relay`` metadata key: the owner answers from what it runs
itself and never relays further, so two cores can never relay to each other in a circle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.api import httpbody_pb2

from lva.v1 import images_pb2, streams_pb2
from lva_common.errors import OBJECT_NOT_FOUND, LunaError
from lva_core.api.convert import watch_response
from lva_core.events.messages import StreamEvent
from lva_core.streams.manager import StreamManager
from lva_core.streams.state import Status

log = logging.getLogger("lva_core.fleet")

RELAY_KEY = "lva-relay"
# How long GetStream waits for the owner's live statistics before it answers with the stored ones.
STATISTICS_DEADLINE = 0.5
# How long an agent that lacks an image waits for the others' answers.
IMAGE_DEADLINE = 2.0
# How often a watcher re-reads the store while no agent it can reach runs the stream.
IDLE_POLL = 0.5
_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A frozen owner is found within 8 s (the core allows these pings: api/server.py).
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 3000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def is_relayed(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    return any(key == RELAY_KEY for key, _ in context.invocation_metadata() or ())


class Peers:
    """One channel per other agent's endpoint, opened when first needed."""

    def __init__(self, credentials: grpc.ChannelCredentials | None = None) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._credentials = credentials  # None: plaintext, as the cores' own ports

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(endpoint, options=_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(endpoint, self._credentials, options=_OPTIONS)
            self._channels[endpoint] = channel
        return channel

    async def get(self, endpoint: str, request: streams_pb2.GetStreamRequest) -> streams_pb2.Stream | None:
        """The owner's live record, or None when it does not answer within the deadline."""
        call = self._channel(endpoint).unary_unary(
            "/lva.v1.StreamsService/GetStream",
            request_serializer=streams_pb2.GetStreamRequest.SerializeToString,
            response_deserializer=streams_pb2.GetStreamResponse.FromString,
        )
        try:
            response = await call(request, timeout=STATISTICS_DEADLINE, metadata=((RELAY_KEY, "1"),))
        except grpc.aio.AioRpcError as exc:
            log.debug("live statistics from %s: %s", endpoint, exc.code().name)
            return None
        stream: streams_pb2.Stream = response.stream
        return stream

    async def image(self, endpoint: str, request: images_pb2.GetImageRequest) -> httpbody_pb2.HttpBody | None:
        """The image from another agent's store, or None (not there, or no answer in time)."""
        call = self._channel(endpoint).unary_unary(
            "/lva.v1.ImagesService/GetImage",
            request_serializer=images_pb2.GetImageRequest.SerializeToString,
            response_deserializer=httpbody_pb2.HttpBody.FromString,
        )
        try:
            body: httpbody_pb2.HttpBody = await call(
                request, timeout=IMAGE_DEADLINE, metadata=((RELAY_KEY, "1"),)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND:
                log.debug("image from %s: %s", endpoint, exc.code().name)
            return None
        return body

    def watch(self, endpoint: str, stream_id: str, account_id: str) -> Any:
        call = self._channel(endpoint).unary_stream(
            "/lva.v1.StreamsService/WatchStream",
            request_serializer=streams_pb2.WatchStreamRequest.SerializeToString,
            response_deserializer=streams_pb2.WatchStreamResponse.FromString,
        )
        request = streams_pb2.WatchStreamRequest(stream_id=stream_id, account_id=account_id)
        return call(request, metadata=((RELAY_KEY, "1"),))

    async def close(self) -> None:
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                await channel.close(grace=0)
        self._channels.clear()


def _is_status_only(response: streams_pb2.WatchStreamResponse) -> bool:
    return not response.analytics_results.fields


def _key(response: streams_pb2.WatchStreamResponse) -> tuple[int, str]:
    return response.stream_status, response.error


async def follow(
    manager: StreamManager, peers: Peers, own_endpoint: str, stream_id: str, account_id: str
) -> AsyncIterator[streams_pb2.WatchStreamResponse]:
    """The stream's messages wherever it runs, until it is deleted (a last ``stop``)."""
    last: tuple[int, str] | None = None

    def fresh(response: streams_pb2.WatchStreamResponse) -> bool:
        nonlocal last
        if _is_status_only(response):
            if _key(response) == last:
                return False
            last = _key(response)
        return True

    located = await manager.locate(stream_id, account_id)  # not found: the caller's error
    while True:
        record = located.record
        if located.local:
            subscription = manager.bus.subscribe(record.stream_id)
            try:
                current = watch_response(StreamEvent.of(record), 0)
                if fresh(current):
                    yield current
                while (delivery := await subscription.get()) is not None:
                    response = watch_response(delivery.message, delivery.lost)
                    if fresh(response):
                        yield response
            finally:
                manager.bus.unsubscribe(subscription)
        elif located.endpoint and located.endpoint != own_endpoint:
            call = peers.watch(located.endpoint, record.stream_id, account_id)
            answered = False
            try:
                async for response in call:
                    answered = True
                    if fresh(response):
                        yield response
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    log.info(
                        "watch of %s at %s ended: %s", record.stream_id, located.endpoint, exc.code().name
                    )
            finally:
                call.cancel()
            if not answered:
                # The owner's lease is alive in the store but it does not answer: it died, or
                # the network between the cores did. Another agent claims it once the lease ends.
                owner = record.owner.agent_id if record.owner else "its agent"
                waiting = watch_response(StreamEvent(Status.RESTART, f"{owner} does not answer"), 0)
                if fresh(waiting):
                    yield waiting
                await asyncio.sleep(IDLE_POLL)
        else:
            # No agent runs it now: waiting to be claimed, paused, ended, or its agent is gone.
            status, error = record.status, record.error
            if status.active and record.owner is None and status is not Status.PENDING:
                status, error = Status.RESTART, "waiting for an agent to take the stream over"
            shown = watch_response(StreamEvent(status, error), 0)
            if fresh(shown):
                yield shown
            await asyncio.sleep(IDLE_POLL)
        try:
            located = await manager.locate(stream_id, account_id)
        except LunaError as exc:
            if exc.spec is not OBJECT_NOT_FOUND:
                await asyncio.sleep(IDLE_POLL)  # the store is away: keep following
                continue
            gone = watch_response(StreamEvent(Status.STOP, "stream deleted"), 0)
            if fresh(gone):
                yield gone
            return
