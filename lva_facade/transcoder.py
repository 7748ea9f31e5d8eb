"""The generic REST <-> gRPC transcoder: one handler per route of the route table.

Binding follows google.api.http: path variables fill the fields they name, ``body: "*"`` fills
the request from the JSON body, and every remaining scalar field may come from the query string.
Unknown query parameters are an error (12012), as LUNA's services answer.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import grpc
import yaml
from aiohttp import web
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from lva_common.errors import (
    BAD_CONTENT_TYPE,
    BAD_JSON,
    BAD_QUERY,
    CORE_UNAVAILABLE,
    HEALTH_CHECK,
    REGISTRY,
    LunaError,
    from_trailers,
    spec_for_grpc_code,
)
from lva_common.tls import channel_credentials, channel_options
from lva_facade.jsoncodec import (
    CodecError,
    is_repeated,
    json_name,
    json_to_message,
    message_to_json,
    parse_query_value,
    set_field,
)
from lva_facade.negotiation import YAML_MEDIA, negotiate
from lva_facade.request_id import METADATA_KEY, Handler, request_id_of
from lva_facade.routes import Route

# Reconnect quickly after the core restarts; gRPC's default backoff grows to two minutes. A
# ping every 5 s, answered within 3 s, finds a core that hangs (frozen, its machine gone without a
# reset): within 8 s round robin stops sending it calls. The core allows pings that often
# (lva_core/api/server.py).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 3000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Answers above gRPC's default 4 MiB: a google.api.HttpBody (a large picture) is one message.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


# A fleet: every call goes to the next core that answers (a dead one is skipped).
_ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def channel_target(address: str) -> tuple[str, bool]:
    """gRPC's target for ``facade.core_address``, and whether it balances over several cores.

    One ``host:port`` is one core. Several, comma-separated (``10.0.0.5:5241,10.0.0.6:5241``),
    are the cores of a fleet, as IP addresses; ``dns:///lva-core.ns.svc:5241`` is every address
    a name resolves to (a Kubernetes headless Service), re-resolved when a connection drops.
    """
    parts = [p.strip() for p in address.split(",") if p.strip()]
    if not parts:
        raise ValueError("facade.core_address is empty")
    if len(parts) > 1:
        for part in parts:
            host = part.rsplit(":", 1)[0].strip("[]")
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(
                    f"facade.core_address: {part!r} in a list must be an IP address and port; "
                    "for names use dns:///<name>:<port>, which balances over every address of the name"
                ) from None
        family = "ipv6" if ":" in parts[0].rsplit(":", 1)[0] else "ipv4"
        return f"{family}:{','.join(parts)}", True
    return parts[0], parts[0].startswith("dns:")


class CoreClient:
    """The facade's one channel to the core (or to the cores of a fleet), a cached stub per method."""

    def __init__(self, address: str, timeout: float, tls: dict[str, Any] | None = None) -> None:
        self.address = address
        self.timeout = timeout
        # facade.core_tls; checked here, so that a bad certificate path fails at startup.
        self._credentials = channel_credentials(tls or {})
        self._target, balanced = channel_target(address)
        self._options = CHANNEL_OPTIONS + channel_options(tls or {})
        if balanced:
            self._options = [*self._options, ("grpc.service_config", _ROUND_ROBIN)]
        self._channel: grpc.aio.Channel | None = None
        self._callables: dict[str, Any] = {}

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            # Created lazily so that it binds to the running event loop.
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self._target, options=self._options)
            else:
                credentials = self._credentials
                self._channel = grpc.aio.secure_channel(self._target, credentials, options=self._options)
        return self._channel

    def unary_unary(self, route: Route) -> Any:
        stub = self._callables.get(route.grpc_path)
        if stub is None:
            response_cls = GetMessageClass(route.method.output_type)
            stub = self.channel.unary_unary(
                route.grpc_path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_cls.FromString,
            )
            self._callables[route.grpc_path] = stub
        return stub

    def channel_method(self, path: str, request_cls: Any, response_cls: Any) -> Any:
        """A cached unary stub for a method the facade calls by itself (the WebSocket's checks)."""

        def stub() -> Any:
            cached = self._callables.get(path)
            if cached is None:
                cached = self.channel.unary_unary(
                    path,
                    request_serializer=request_cls.SerializeToString,
                    response_deserializer=response_cls.FromString,
                )
                self._callables[path] = cached
            return cached

        return stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def rpc_error_to_luna(exc: grpc.aio.AioRpcError, route: Route, address: str) -> LunaError:
    sent = from_trailers(exc.trailing_metadata())
    if sent is not None:
        return sent
    code, details = exc.code(), exc.details() or exc.code().name
    if code == grpc.StatusCode.UNAVAILABLE:
        spec = REGISTRY.get(route.extras.upstream_error_code, CORE_UNAVAILABLE)
        extra: dict[str, Any] = {}
        if spec is HEALTH_CHECK:
            extra["errors"] = [{"component": "lva_core", "status": "unavailable", "error": details}]
        return LunaError(spec, f"core service at {address} is unavailable: {details}", extra)
    return LunaError(spec_for_grpc_code(code), details)


def _bind_path(message: Message, route: Route, match_info: dict[str, str]) -> None:
    fields = message.DESCRIPTOR.fields_by_name
    for name in route.path_fields:
        field = fields[name]
        try:
            set_field(message, field, parse_query_value(field, match_info[name], name), name)
        except CodecError as exc:
            raise LunaError(BAD_QUERY, f"path parameter {exc}") from None


def _bind_query(message: Message, route: Route, request: web.Request) -> None:
    allowed = {json_name(f): f for f in route.query_fields()}
    allowed.update({f.name: f for f in route.query_fields()})
    for key in sorted(set(request.query.keys())):  # sorted: the same error for the same request
        field = allowed.get(key)
        if field is None:
            known = ", ".join(sorted({json_name(f) for f in route.query_fields()})) or "none"
            raise LunaError(BAD_QUERY, f"unknown query parameter {key!r} (accepted: {known})")
        values = request.query.getall(key)
        if len(values) > 1 and not is_repeated(field):
            # Taking the first or the last would each be a guess that some proxy or client
            # makes the other way (HTTP parameter pollution).
            raise LunaError(
                BAD_QUERY, f"query parameter {key!r} is given {len(values)} times; it takes one value"
            )
        try:
            parsed = [parse_query_value(field, v, key) for v in values]
            value = parsed if is_repeated(field) else parsed[0]
            message.ClearField(field.name)
            set_field(message, field, value, key)
        except CodecError as exc:
            raise LunaError(BAD_QUERY, str(exc)) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, strictly: every failure is a 12027, never an internal error.

    Python's parser is lenient and fragile where a fuzzer looks: it accepts ``NaN`` and
    ``Infinity`` (which protobuf then cannot render back), raises ValueError for integers of
    more than 4300 digits and RecursionError for deep nesting.
    """
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise LunaError(BAD_JSON, "malformed JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the digit limit, NaN
        raise LunaError(BAD_JSON, f"malformed JSON: {exc}") from None


async def _bind_body(message: Message, route: Route, request: web.Request) -> None:
    if not route.body:
        return
    raw = await request.read()
    if not raw.strip():
        data: Any = {}
    else:
        if request.content_type != "application/json":
            raise LunaError(
                BAD_CONTENT_TYPE, f"content type {request.content_type!r}: expected application/json"
            )
        data = parse_json(raw)
    try:
        if route.body == "*":
            json_to_message(data, message)
        else:
            set_field(message, message.DESCRIPTOR.fields_by_name[route.body], data, route.body)
    except CodecError as exc:
        raise LunaError(BAD_JSON, str(exc), {"path": exc.path}) from None


def _render(route: Route, response: Message, media: str) -> web.Response:
    if route.success_status == 204:
        return web.Response(status=204)
    data = message_to_json(response)
    if route.response_body:
        data = data[json_name(response.DESCRIPTOR.fields_by_name[route.response_body])]
    if media == "text/plain" or media in YAML_MEDIA:
        # The seed's text/plain for /1/config is YAML text; so is either YAML type, as on /docs/spec.
        return web.Response(
            text=yaml.safe_dump(data, sort_keys=False), content_type=media, status=route.success_status
        )
    return web.json_response(data, status=route.success_status)


def _render_http_body(route: Route, response: Message, accept: str | None) -> web.Response:
    """A ``google.api.HttpBody`` answer: its bytes with its own content type, which the
    ``Accept`` header must allow (406, error 12024, otherwise)."""
    content_type = str(getattr(response, "content_type", "")) or "application/octet-stream"
    negotiate(accept, (content_type.split(";", 1)[0].strip().lower(),))
    return web.Response(
        body=bytes(getattr(response, "data", b"")),
        status=route.success_status,
        headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff"},
    )


def make_handler(route: Route, core: CoreClient) -> Handler:
    request_cls = GetMessageClass(route.input_type)

    async def handle(request: web.Request) -> web.StreamResponse:
        accept = request.headers.get("Accept")
        # An HttpBody's type is known only from the answer; the route's declared types (if
        # any) still refuse an Accept none of them could satisfy before the call is made.
        media = negotiate(accept, route.produces) if route.produces != ("*/*",) else "*/*"
        message = request_cls()
        _bind_query(message, route, request)
        await _bind_body(message, route, request)
        _bind_path(message, route, dict(request.match_info))
        try:
            response = await core.unary_unary(route)(
                message, metadata=((METADATA_KEY, request_id_of(request)),), timeout=core.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_to_luna(exc, route, core.address) from None
        if route.http_body:
            return _render_http_body(route, response, accept)
        return _render(route, response, media)

    handle.__name__ = route.method.name
    return handle


_AIOHTTP_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def aiohttp_path(path: str) -> str:
    """``/1/streams/{stream_id}`` with each variable matching any one segment.

    aiohttp's own ``{name}`` stops at braces: ``/1/streams/{<uuid>}`` matched no route (12013),
    where the id deserves the core's answer about it (12012, not a UUID).
    """
    return _AIOHTTP_VARIABLE.sub(lambda m: "{" + m.group(1) + ":[^/]+}", path)


def add_routes(app: web.Application, routes: list[Route], core: CoreClient) -> None:
    """Register every unary route; server-streaming RPCs are bridged by hand (the WebSocket)."""
    for route in routes:
        if route.server_streaming or route.method.client_streaming:
            continue
        handler = make_handler(route, core)
        path = aiohttp_path(route.path)
        if route.http_method == "GET":
            # HEAD wherever GET works (load balancers probe with it); aiohttp drops the body.
            app.router.add_get(path, handler, allow_head=True)
        else:
            app.router.add_route(route.http_method, path, handler)
