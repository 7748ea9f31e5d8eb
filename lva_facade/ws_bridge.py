"""``/1/ws``: the WebSocket bridge of the core's server-streaming WatchStream RPC.

The one hand-written route of the facade; even its path comes from WatchStream's annotation.
Everything is checked before the upgrade (the UUID, the stream's existence, its owner), so a
bad request gets an ordinary HTTP error with a LUNA body. After the upgrade each gRPC message
becomes one JSON text message in the seed's shape; the server pings (autoping) to keep proxies
and dead peers honest. A slow client only fills its own bounded queue in the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import grpc
from aiohttp import HttpVersion11, WSMsgType, web
from google.protobuf.struct_pb2 import Struct

from lva.v1 import streams_pb2
from lva_common.errors import BAD_HANDSHAKE, BAD_QUERY, LunaError, missing_parameter
from lva_common.ids import query_uuid
from lva_facade.jsoncodec import message_to_json
from lva_facade.request_id import HEADER, METADATA_KEY, request_id_of
from lva_facade.routes import Route
from lva_facade.transcoder import CoreClient, rpc_error_to_luna

log = logging.getLogger("lva_facade.ws")
QUERY = {"stream_id", "account_id"}
# Absent: 12014 (LUNA's "Required parameter not found"); present but not a UUID, empty included: 12012.
REQUIRED = ("stream_id",)


def render(response: streams_pb2.WatchStreamResponse) -> dict[str, Any]:
    """One WebSocket message: the generic codec's JSON of the gRPC message, with one rule of the
    seed's shape: ``lost_messages`` appears only when something was lost (three keys otherwise)."""
    data: dict[str, Any] = message_to_json(response)
    if not data.get("lost_messages"):
        data.pop("lost_messages", None)
    return data


# Between two attempts to watch again after the core went away.
RESUME_PAUSE = 0.3


def add_ws_route(
    app: web.Application, route: Route, core: CoreClient, heartbeat: float, resume_timeout: float = 15.0
) -> None:
    get_stream = core.channel_method(
        "/lva.v1.StreamsService/GetStream",
        streams_pb2.GetStreamRequest,
        streams_pb2.GetStreamResponse,
    )

    async def handle(request: web.Request) -> web.StreamResponse:
        unknown = set(request.query) - QUERY
        if unknown:
            raise LunaError(
                BAD_QUERY, f"unknown query parameter(s) {sorted(unknown)} (accepted: {sorted(QUERY)})"
            )
        for name in REQUIRED:
            if name not in request.query:
                raise missing_parameter(name)
        stream_id = request.query["stream_id"]
        account_id = request.query.get("account_id", "")
        # Checked here, before the upgrade; the core looks up the canonical form (lva_common.ids).
        query_uuid(stream_id, "stream_id")
        if account_id:
            query_uuid(account_id, "account_id")
        metadata = ((METADATA_KEY, request_id_of(request)),)
        try:
            await get_stream()(
                streams_pb2.GetStreamRequest(stream_id=stream_id, account_id=account_id),
                metadata=metadata,
                timeout=core.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_to_luna(exc, route, core.address) from None

        if request.version < HttpVersion11:
            # RFC 6455 4.1; aiohttp would upgrade an HTTP/1.0 request, whose proxies know no Upgrade.
            raise LunaError(BAD_HANDSHAKE, "a WebSocket handshake needs HTTP/1.1 or later")
        ws = web.WebSocketResponse(heartbeat=heartbeat, autoping=True)
        ws.headers[HEADER] = request_id_of(request)
        try:
            await ws.prepare(request)
        except web.HTTPBadRequest as exc:
            # aiohttp checks the handshake before it sends anything; its answer would be text/plain.
            raise LunaError(BAD_HANDSHAKE, f"not a valid WebSocket upgrade: {exc.text}") from None
        watch: Any = core.channel.unary_stream(
            route.grpc_path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=streams_pb2.WatchStreamResponse.FromString,
        )
        request_message = streams_pb2.WatchStreamRequest(stream_id=stream_id, account_id=account_id)
        calls: list[Any] = []

        async def pump() -> None:
            # A core that goes away (killed, restarted, drained) is not the stream's end: the
            # watch is opened again, on another core of a fleet or on the restarted one, for up
            # to resume_timeout; its first message is where the stream stands by then.
            down_since: float | None = None
            try:
                while True:
                    call: Any = watch(request_message, metadata=metadata)
                    calls.append(call)
                    try:
                        async for response in call:
                            down_since = None
                            await ws.send_json(render(response))
                        return
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() == grpc.StatusCode.CANCELLED:
                            return
                        now = time.monotonic()
                        down_since = now if down_since is None else down_since
                        if exc.code() != grpc.StatusCode.UNAVAILABLE or now - down_since > resume_timeout:
                            error = rpc_error_to_luna(exc, route, core.address)
                            # The same shape as every message: no status, the error, no results.
                            last = streams_pb2.WatchStreamResponse(
                                error=error.detail, analytics_results=Struct()
                            )
                            with contextlib.suppress(ConnectionError, RuntimeError):
                                await ws.send_json(render(last))
                            return
                        log.info(
                            "watch of %s: the core went away (%s); watching again", stream_id, exc.details()
                        )
                        await asyncio.sleep(RESUME_PAUSE)
            except (ConnectionError, RuntimeError):
                pass  # the client went away while we were sending
            finally:
                await ws.close()

        pumping = asyncio.create_task(pump())
        try:
            async for message in ws:  # client messages are ignored; this loop ends at close
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            for call in calls:
                call.cancel()
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping
        return ws

    app.router.add_get(route.path, handle)
