"""StreamsService: thin gRPC over the StreamManager, and the server-streaming watch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from lva.v1 import streams_pb2, streams_pb2_grpc
from lva_common.errors import TOO_MANY_REQUESTS, LunaError, invalid
from lva_common.ids import canonical_uuid
from lva_core.api.convert import (
    status_from_proto,
    stream_spec_from_request,
    stream_to_proto,
    watch_response,
)
from lva_core.api.ratelimit import RateLimiter
from lva_core.events.messages import StreamEvent
from lva_core.streams.manager import StreamManager

Context = grpc.aio.ServicerContext[Any, Any]


def _bucket_key(account_id: str) -> str:
    """The rate limit's key: the canonical UUID, the form streams are stored under, so that a key
    is small whatever the caller sends; every malformed id shares one bucket (creation refuses
    them anyway)."""
    if not account_id:
        return ""
    return canonical_uuid(account_id) or "invalid"


class StreamsServicer(streams_pb2_grpc.StreamsServiceServicer):
    def __init__(self, manager: StreamManager, create_limiter: RateLimiter | None = None) -> None:
        self._manager = manager
        self._create_limiter = create_limiter

    async def CreateStream(
        self, request: streams_pb2.CreateStreamRequest, context: Context
    ) -> streams_pb2.CreateStreamResponse:
        if self._create_limiter is not None:
            # Checked before validation, so that invalid requests count too: probing is not free.
            wait = self._create_limiter.acquire(_bucket_key(request.account_id))
            if wait > 0:
                account = request.account_id or "the anonymous account"
                raise LunaError(
                    TOO_MANY_REQUESTS,
                    f"{account} creates streams faster than streams.create_rate allows; "
                    f"retry in {wait:.2f} s",
                    {"retry_after": round(wait, 3)},
                )
        record = await self._manager.create(stream_spec_from_request(request))
        return streams_pb2.CreateStreamResponse(
            stream_id=record.stream_id, url=f"/1/streams/{record.stream_id}"
        )

    async def GetStream(
        self, request: streams_pb2.GetStreamRequest, context: Context
    ) -> streams_pb2.GetStreamResponse:
        return streams_pb2.GetStreamResponse(
            stream=stream_to_proto(self._manager.get(request.stream_id, request.account_id))
        )

    async def ListStreams(
        self, request: streams_pb2.ListStreamsRequest, context: Context
    ) -> streams_pb2.ListStreamsResponse:
        status = status_from_proto(request.status)
        records, count = self._manager.list(request.account_id, status, request.page, request.page_size)
        return streams_pb2.ListStreamsResponse(streams=[stream_to_proto(r) for r in records], count=count)

    async def UpdateStream(
        self, request: streams_pb2.UpdateStreamRequest, context: Context
    ) -> streams_pb2.UpdateStreamResponse:
        target = status_from_proto(request.status)
        if target is None:
            raise invalid("status", "is required: pause, or pending to resume")
        record = await self._manager.update(request.stream_id, target, request.account_id)
        return streams_pb2.UpdateStreamResponse(stream=stream_to_proto(record))

    async def DeleteStream(
        self, request: streams_pb2.DeleteStreamRequest, context: Context
    ) -> streams_pb2.DeleteStreamResponse:
        await self._manager.delete(request.stream_id, request.account_id)
        return streams_pb2.DeleteStreamResponse()

    async def WatchStream(
        self, request: streams_pb2.WatchStreamRequest, context: Context
    ) -> AsyncIterator[streams_pb2.WatchStreamResponse]:
        record = self._manager.get(request.stream_id, request.account_id)
        bus = self._manager.bus
        subscription = bus.subscribe(record.stream_id)
        try:
            # The current status first, so that a watcher knows where the stream stands.
            yield watch_response(StreamEvent.of(record), 0)
            while (delivery := await subscription.get()) is not None:
                yield watch_response(delivery.message, delivery.lost)
        finally:
            bus.unsubscribe(subscription)
