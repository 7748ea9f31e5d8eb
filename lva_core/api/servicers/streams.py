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
from lva_core.api.follow import Peers, follow, is_relayed
from lva_core.api.ratelimit import RateLimiter
from lva_core.events.messages import StreamEvent
from lva_core.streams.manager import StreamManager
from lva_core.streams.record import StreamRecord

Context = grpc.aio.ServicerContext[Any, Any]


def _bucket_key(account_id: str) -> str:
    """The rate limit's key: the canonical UUID, the form streams are stored under, so that a key
    is small whatever the caller sends; every malformed id shares one bucket (creation refuses
    them anyway)."""
    if not account_id:
        return ""
    return canonical_uuid(account_id) or "invalid"


class StreamsServicer(streams_pb2_grpc.StreamsServiceServicer):
    def __init__(
        self,
        manager: StreamManager,
        create_limiter: RateLimiter | None = None,
        peers: Peers | None = None,
        own_endpoint: str = "",
    ) -> None:
        self._manager = manager
        self._create_limiter = create_limiter
        # A fleet's agent: the other agents, for live statistics and watches (api/follow.py).
        self._peers = peers
        self.own_endpoint = own_endpoint  # set once the agent knows its endpoint

    def _shown(self, record: StreamRecord) -> streams_pb2.Stream:
        """The stream with its callbacks' delivery statistics, as this core counts them."""
        return stream_to_proto(record, self._manager.delivery.statistics(record), self._manager.sinks)

    async def CreateStream(
        self, request: streams_pb2.CreateStreamRequest, context: Context
    ) -> streams_pb2.CreateStreamResponse:
        if self._create_limiter is not None:
            # Checked before validation, so that invalid requests count too: probing is not free.
            wait = self._create_limiter.acquire(_bucket_key(request.account_id))
            if wait > 0:
                account = request.account_id or "the anonymous account"
                # One rounded figure for both the text and the field, so they never disagree
                # (99.9949 would read "99.99" beside a field of 99.995).
                retry_after = round(wait, 3)
                raise LunaError(
                    TOO_MANY_REQUESTS,
                    f"{account} creates streams faster than streams.create_rate allows; "
                    f"retry in {retry_after:.2f} s",
                    {"retry_after": retry_after},
                )
        record = await self._manager.create(stream_spec_from_request(request))
        return streams_pb2.CreateStreamResponse(
            stream_id=record.stream_id, url=f"/1/streams/{record.stream_id}"
        )

    async def GetStream(
        self, request: streams_pb2.GetStreamRequest, context: Context
    ) -> streams_pb2.GetStreamResponse:
        located = await self._manager.locate(request.stream_id, request.account_id)
        if (
            self._peers is not None
            and not located.local
            and located.endpoint
            and located.endpoint != self.own_endpoint
            and not is_relayed(context)
        ):
            live = await self._peers.get(located.endpoint, request)
            if live is not None and live.stream_id == located.record.stream_id:
                return streams_pb2.GetStreamResponse(stream=live)
        return streams_pb2.GetStreamResponse(stream=self._shown(located.record))

    async def ListStreams(
        self, request: streams_pb2.ListStreamsRequest, context: Context
    ) -> streams_pb2.ListStreamsResponse:
        status = status_from_proto(request.status)
        records, count = await self._manager.list(request.account_id, status, request.page, request.page_size)
        return streams_pb2.ListStreamsResponse(streams=[self._shown(r) for r in records], count=count)

    async def UpdateStream(
        self, request: streams_pb2.UpdateStreamRequest, context: Context
    ) -> streams_pb2.UpdateStreamResponse:
        target = status_from_proto(request.status)
        if target is None:
            raise invalid("status", "is required: pause, or pending to resume")
        record = await self._manager.update(request.stream_id, target, request.account_id)
        return streams_pb2.UpdateStreamResponse(stream=self._shown(record))

    async def DeleteStream(
        self, request: streams_pb2.DeleteStreamRequest, context: Context
    ) -> streams_pb2.DeleteStreamResponse:
        await self._manager.delete(request.stream_id, request.account_id)
        return streams_pb2.DeleteStreamResponse()

    async def WatchStream(
        self, request: streams_pb2.WatchStreamRequest, context: Context
    ) -> AsyncIterator[streams_pb2.WatchStreamResponse]:
        if self._peers is not None and not is_relayed(context):
            async for response in follow(
                self._manager, self._peers, self.own_endpoint, request.stream_id, request.account_id
            ):
                yield response
            return
        located = await self._manager.locate(request.stream_id, request.account_id)
        if not located.local:
            return  # relayed here, but it does not run here (any more): the caller looks again
        record = located.record
        bus = self._manager.bus
        subscription = bus.subscribe(record.stream_id)
        try:
            # The current status first, so that a watcher knows where the stream stands.
            yield watch_response(StreamEvent.of(record), 0)
            while (delivery := await subscription.get()) is not None:
                yield watch_response(delivery.message, delivery.lost)
        finally:
            bus.unsubscribe(subscription)
