"""One place where servicer failures become gRPC statuses with a LUNA code.

Servicers raise LunaError; this interceptor aborts the RPC with the error's gRPC code and a
rich status (lva_common.errors) so that any client, the facade included, gets the LUNA code. It
also binds the caller's Luna-Request-Id to the logging context for the RPC's duration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from lva_common.errors import BAD_JSON, INTERNAL, NOT_IMPLEMENTED, LunaError
from lva_common.logs import request_id_var
from lva_core.metrics.instruments import RPC_LATENCY, RPC_REQUESTS

log = logging.getLogger("lva_core.rpc")
REQUEST_ID_KEY = "luna-request-id"


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            return value
    return "-"


def _as_luna(exc: Exception, method: str) -> LunaError:
    if isinstance(exc, LunaError):
        return exc
    if isinstance(exc, NotImplementedError):
        return LunaError(NOT_IMPLEMENTED, f"{method} is not implemented yet")
    log.exception("%s failed", method)
    return LunaError(INTERNAL, f"{method} failed: {type(exc).__name__}")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: LunaError) -> None:
    await context.abort(error.spec.grpc_code, error.detail, trailing_metadata=error.trailing_metadata())


# Subscriptable only in the stubs, hence the string alias.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class Undecodable:
    """Stands in for a request whose bytes protobuf refused (nested past its limit, truncated).

    grpc decodes a request before any interceptor runs and answers its own failure with a bare
    INTERNAL and a logged traceback; deferring the failure to the handler lets it become a LUNA
    status like every other bad request, logged and counted with the caller's request id.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    decode = deserializer

    def deserialize(raw: bytes) -> Any:
        try:
            return decode(raw)
        except DecodeError as exc:
            return Undecodable(str(exc))

    return deserialize


def _decoded(request: Any) -> Any:
    if isinstance(request, Undecodable):
        raise LunaError(BAD_JSON, f"the request could not be decoded: {request.reason}")
    return request


class LunaErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            # The aio server hands coroutine functions here; the stubs type them as sync ones.
            inner_unary: Any = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                token = request_id_var.set(_request_id(context))
                started = time.perf_counter()
                outcome = "OK"
                try:
                    return await inner_unary(_decoded(request), context)
                except grpc.aio.AbortError:
                    outcome = "aborted"
                    raise
                except Exception as exc:
                    error = _as_luna(exc, method)
                    outcome = f"error {error.code}"
                    await _abort(context, error)
                finally:
                    elapsed = time.perf_counter() - started
                    log.info("%s %s %.1f ms", method, outcome, elapsed * 1000)
                    RPC_REQUESTS.labels(method, outcome).inc()
                    RPC_LATENCY.labels(method).observe(elapsed)
                    request_id_var.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream

            async def unary_stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                # Set, never reset: a server-streaming generator may be finalised in another
                # context (the client went away), where resetting the token raises. The RPC's
                # task owns a copy of the context, so the value dies with it.
                request_id_var.set(_request_id(context))
                started = time.perf_counter()
                outcome, sent = "OK", 0
                try:
                    async for item in inner_stream(_decoded(request), context):
                        sent += 1
                        yield item
                except grpc.aio.AbortError:
                    outcome = "aborted"
                    raise
                except (asyncio.CancelledError, GeneratorExit):
                    outcome = "cancelled"  # the client stopped watching: the usual end of a watch
                    raise
                except Exception as exc:
                    error = _as_luna(exc, method)
                    outcome = f"error {error.code}"
                    await _abort(context, error)
                finally:
                    # One line and one count per RPC, streams included; no latency: a watch lasts.
                    elapsed = time.perf_counter() - started
                    log.info("%s %s %.1f ms, %d messages", method, outcome, elapsed * 1000, sent)
                    RPC_REQUESTS.labels(method, outcome).inc()

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler
