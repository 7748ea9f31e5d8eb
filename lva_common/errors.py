"""The one registry of LUNA error codes, and their transport across gRPC.

Every error the agent reports has a code here. The codes LUNA defines keep LUNA's numbers; the
ones LUNA does not cover live in the 47000 range. The facade turns a code into an HTTP status and
a LUNA error body; the manual's error page is rendered from this table (docs/conf.py).

Across gRPC an error travels as a rich status (``grpc-status-details-bin``): a google.rpc.Status
whose details hold an ErrorInfo with domain ``lva`` and metadata ``error_code``, ``desc``,
``detail`` and, optionally, ``extra`` (a JSON object merged into the HTTP body).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "lva"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class ErrorSpec:
    """One error code: how it is named, which HTTP and gRPC statuses carry it."""

    code: int
    desc: str
    http_status: int
    grpc_code: grpc.StatusCode
    explanation: str


def _spec(code: int, desc: str, http: int, grpc_code: grpc.StatusCode, explanation: str) -> ErrorSpec:
    return ErrorSpec(code, desc, http, grpc_code, explanation)


_S = grpc.StatusCode
_ALL = [
    _spec(1, "Internal server error", 500, _S.INTERNAL, "An unexpected failure inside the agent."),
    _spec(
        12012,
        "Bad query parameters",
        400,
        _S.INVALID_ARGUMENT,
        "A query or path parameter is unknown, given more than once, or of the wrong type or value "
        "(a required one that is absent is 12014).",
    ),
    _spec(
        12013,
        "Resource not found",
        404,
        _S.NOT_FOUND,
        "No route matches the request path (detail: Page not found), or the manual has no such page. "
        "An object a route names that does not exist (a stream, a model) is 47004 instead.",
    ),
    _spec(
        12014,
        "Required parameter not found",
        400,
        _S.INVALID_ARGUMENT,
        "A query parameter the route requires is absent, for example stream_id of /1/ws; detail: "
        "Required parameter '<name>' not found. One that is present but empty or invalid is 12012.",
    ),
    _spec(
        12017,
        "Bad content type",
        400,
        _S.INVALID_ARGUMENT,
        "The request body is not of a content type the route accepts (application/json).",
    ),
    _spec(
        12021,
        "Method not allowed",
        405,
        _S.UNIMPLEMENTED,
        "The route exists but not for this HTTP method; the Allow header lists the methods it has.",
    ),
    _spec(
        12024,
        "Unsupported media type",
        406,
        _S.INVALID_ARGUMENT,
        "The Accept header asks for a media type the route cannot produce.",
    ),
    _spec(
        12027,
        "Failed to validate input json",
        400,
        _S.INVALID_ARGUMENT,
        "The JSON body is malformed or does not match the schema; detail names the path of the field.",
    ),
    _spec(
        38001,
        "Health check error",
        502,
        _S.UNAVAILABLE,
        "A component the agent depends on is unhealthy; the body's errors list each failed component.",
    ),
    _spec(
        45001,
        "Stream processing error",
        500,
        _S.INTERNAL,
        "LUNA's code, kept for compatibility; this agent never answers with it. A stream it cannot "
        "process (source, decoding or analytics failure) shows that in its status (restart or "
        "failure) and its error, never as an API error; inference failures show in "
        "statistics.last_error.",
    ),
    _spec(
        47001,
        "Bad request id",
        400,
        _S.INVALID_ARGUMENT,
        "The Luna-Request-Id header does not match <10-digit unix time>,<uuid4>.",
    ),
    _spec(
        47004,
        "Object not found",
        404,
        _S.NOT_FOUND,
        "The object (stream, model) the request names does not exist.",
    ),
    _spec(
        47005,
        "Conflict",
        409,
        _S.FAILED_PRECONDITION,
        "The request conflicts with the object's current state.",
    ),
    _spec(
        47006,
        "Core service unavailable",
        503,
        _S.UNAVAILABLE,
        "The facade cannot reach the core gRPC service.",
    ),
    _spec(
        47007,
        "Deadline exceeded",
        504,
        _S.DEADLINE_EXCEEDED,
        "The operation did not finish within its deadline.",
    ),
    _spec(
        47008, "Not implemented", 501, _S.UNIMPLEMENTED, "The operation is declared but not implemented yet."
    ),
    _spec(
        47009,
        "Request body too large",
        413,
        _S.INVALID_ARGUMENT,
        "The request body exceeds the configured size limit.",
    ),
    _spec(
        47010,
        "Unauthorized",
        401,
        _S.UNAUTHENTICATED,
        "The request lacks the bearer token facade.auth_token asks for (Authorization: Bearer <token>), "
        "or the token is wrong.",
    ),
    _spec(
        47011,
        "Too many requests",
        429,
        _S.RESOURCE_EXHAUSTED,
        "The account created streams faster than streams.create_rate allows; retry after the "
        "seconds the Retry-After header (and the body's retry_after) give.",
    ),
    _spec(
        47012,
        "Bad WebSocket handshake",
        400,
        _S.INVALID_ARGUMENT,
        "The request to /1/ws is not a valid WebSocket (RFC 6455) upgrade: HTTP/1.1 or later with "
        "Upgrade: websocket, Connection: Upgrade, a Sec-WebSocket-Key of 16 base64 bytes and "
        "Sec-WebSocket-Version 13.",
    ),
    _spec(
        47013,
        "Malformed HTTP request",
        400,
        _S.INVALID_ARGUMENT,
        "The HTTP parser refused the request before any route saw it: a request line or header "
        "that is not valid HTTP/1.1 (bytes outside ASCII, a header over 8190 bytes), or framing that "
        "cannot be trusted (Content-Length not a number, bad chunked encoding). The connection is closed.",
    ),
    _spec(47101, "Inference server unavailable", 503, _S.UNAVAILABLE, "Triton is not live or not ready."),
    _spec(47102, "Model not found", 404, _S.NOT_FOUND, "The model is not in the Triton repository."),
    _spec(47103, "Model error", 500, _S.INTERNAL, "Triton failed to load, unload or run a model."),
]

REGISTRY: dict[int, ErrorSpec] = {spec.code: spec for spec in _ALL}

INTERNAL = REGISTRY[1]
BAD_QUERY = REGISTRY[12012]
ROUTE_NOT_FOUND = REGISTRY[12013]
MISSING_PARAMETER = REGISTRY[12014]
BAD_CONTENT_TYPE = REGISTRY[12017]
METHOD_NOT_ALLOWED = REGISTRY[12021]
UNSUPPORTED_MEDIA_TYPE = REGISTRY[12024]
BAD_JSON = REGISTRY[12027]
HEALTH_CHECK = REGISTRY[38001]
STREAM_PROCESSING = REGISTRY[45001]
BAD_REQUEST_ID = REGISTRY[47001]
OBJECT_NOT_FOUND = REGISTRY[47004]
CONFLICT = REGISTRY[47005]
CORE_UNAVAILABLE = REGISTRY[47006]
DEADLINE = REGISTRY[47007]
NOT_IMPLEMENTED = REGISTRY[47008]
BODY_TOO_LARGE = REGISTRY[47009]
UNAUTHORIZED = REGISTRY[47010]
TOO_MANY_REQUESTS = REGISTRY[47011]
BAD_HANDSHAKE = REGISTRY[47012]
BAD_HTTP = REGISTRY[47013]
TRITON_UNAVAILABLE = REGISTRY[47101]
MODEL_NOT_FOUND = REGISTRY[47102]
MODEL_ERROR = REGISTRY[47103]

# When a gRPC error carries no LUNA code (a transport failure, a foreign server), the code is
# chosen by its gRPC status, as API.md's mapping says.
_BY_GRPC_CODE: dict[grpc.StatusCode, ErrorSpec] = {
    _S.INVALID_ARGUMENT: BAD_JSON,
    _S.OUT_OF_RANGE: BAD_JSON,
    _S.NOT_FOUND: OBJECT_NOT_FOUND,
    _S.ALREADY_EXISTS: CONFLICT,
    _S.FAILED_PRECONDITION: CONFLICT,
    _S.UNAVAILABLE: CORE_UNAVAILABLE,
    _S.DEADLINE_EXCEEDED: DEADLINE,
    _S.UNIMPLEMENTED: NOT_IMPLEMENTED,
    _S.UNAUTHENTICATED: UNAUTHORIZED,
    _S.RESOURCE_EXHAUSTED: TOO_MANY_REQUESTS,
}


@dataclass
class LunaError(Exception):
    """An error with a LUNA code. Raise it anywhere; the transports render it."""

    spec: ErrorSpec
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(f"{self.spec.code} {self.spec.desc}: {self.detail}")

    @property
    def code(self) -> int:
        return self.spec.code

    def body(self, link: str) -> dict[str, Any]:
        """The LUNA error body, with the extra fields (for example health's ``errors``)."""
        body: dict[str, Any] = {
            "error_code": self.spec.code,
            "desc": self.spec.desc,
            "detail": self.detail,
            "link": link,
        }
        body.update(self.extra)
        return body

    def headers(self) -> dict[str, str]:
        """HTTP headers the error's status calls for: the challenge of a 401, the wait of a 429."""
        if self.spec.http_status == 401:
            return {"WWW-Authenticate": 'Bearer realm="lva"'}
        retry_after = self.extra.get("retry_after")
        if self.spec.http_status == 429 and isinstance(retry_after, int | float):
            # Retry-After takes whole seconds; rounding up never invites a retry that fails again.
            return {"Retry-After": str(max(1, math.ceil(retry_after)))}
        return {}

    def to_rpc_status(self) -> status_pb2.Status:
        metadata = {"error_code": str(self.spec.code), "desc": self.spec.desc, "detail": self.detail}
        if self.extra:
            metadata["extra"] = json.dumps(self.extra)
        info = error_details_pb2.ErrorInfo(
            reason=f"LUNA_{self.spec.code}", domain=ERROR_DOMAIN, metadata=metadata
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        return status_pb2.Status(code=self.spec.grpc_code.value[0], message=str(self), details=[detail])

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return ((STATUS_DETAILS_KEY, self.to_rpc_status().SerializeToString()),)


def invalid(path: str, message: str) -> LunaError:
    """The one error shape for a bad field of a request: 12027, detail ``<path>: <message>``, and
    ``path`` in the body, so that a client can point at the field."""
    return LunaError(BAD_JSON, f"{path}: {message}" if path else message, {"path": path})


def missing_parameter(name: str) -> LunaError:
    """A required query parameter that is absent: 12014, with LUNA's detail."""
    return LunaError(MISSING_PARAMETER, f"Required parameter '{name}' not found")


def spec_for_grpc_code(code: grpc.StatusCode) -> ErrorSpec:
    return _BY_GRPC_CODE.get(code, INTERNAL)


def from_trailers(trailing: Any) -> LunaError | None:
    """The LunaError an lva peer sent in its trailers, or None if it sent none."""
    for key, value in trailing or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for packed in status.details:
            info = error_details_pb2.ErrorInfo()
            if packed.Unpack(info) and info.domain == ERROR_DOMAIN:
                spec = REGISTRY.get(int(info.metadata.get("error_code", "1")), INTERNAL)
                extra = json.loads(info.metadata["extra"]) if "extra" in info.metadata else {}
                return LunaError(spec, info.metadata.get("detail", status.message), extra)
    return None


def from_grpc(code: grpc.StatusCode, details: str | None, trailing: Any) -> LunaError:
    """Rebuild the LunaError a gRPC peer sent, or classify a plain gRPC failure."""
    return from_trailers(trailing) or LunaError(spec_for_grpc_code(code), details or code.name)


def anchor(code: int) -> str:
    """The fragment of the code's entry on the manual's error page."""
    return f"error-{code}"
