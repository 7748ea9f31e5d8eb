"""Every failure becomes a LUNA error body with its exact HTTP status."""

from __future__ import annotations

import logging
import re
import time

from aiohttp import web

from lva_common.errors import (
    BODY_TOO_LARGE,
    INTERNAL,
    METHOD_NOT_ALLOWED,
    ROUTE_NOT_FOUND,
    LunaError,
    anchor,
)
from lva_facade.metrics import ERROR_CODE_KEY, observe
from lva_facade.request_id import HEADER, Handler, request_id_of

log = logging.getLogger("lva_facade")
access_log = logging.getLogger("lva_facade.access")
DOCS_PREFIX = "/docs/dev"


# A host name, an IPv4 address or a bracketed IPv6 one, and an optional port: what a Host header
# may hold (RFC 9110 7.2). Anything else never reaches a link.
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _link_host(request: web.Request) -> str:
    """The request's Host when it is a valid one, else the address the request came in on."""
    host = request.host
    if _HOST.fullmatch(host):
        return host
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        address, port = str(sockname[0]), int(sockname[1])
        return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return "localhost"


def error_link(request: web.Request, code: int) -> str:
    return f"{request.scheme}://{_link_host(request)}{DOCS_PREFIX}/errors.html#{anchor(code)}"


def error_response(request: web.Request, error: LunaError) -> web.Response:
    request[ERROR_CODE_KEY] = error.code
    return web.json_response(
        error.body(error_link(request, error.code)), status=error.spec.http_status, headers=error.headers()
    )


def allow_header(exc: web.HTTPMethodNotAllowed) -> str:
    """RFC 9110's Allow: the methods the resource does support, in a stable order."""
    return ", ".join(sorted(exc.allowed_methods))


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> LunaError | None:
    # LUNA's answers: 12013 with "Page not found" for a path no route has, 12021 for a method the
    # route lacks (the Allow header, added by the caller, lists those it has).
    if isinstance(exc, web.HTTPNotFound):
        return LunaError(ROUTE_NOT_FOUND, "Page not found")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return LunaError(
            METHOD_NOT_ALLOWED, f"Method not allowed: {request.method}; allowed methods: {allow_header(exc)}"
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return LunaError(BODY_TOO_LARGE, exc.text or "request body too large")
    return None


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except LunaError as error:
        if error.spec.http_status >= 500:
            log.warning("request %s failed: %s", request_id_of(request), error)
        return error_response(request, error)
    except web.HTTPException as exc:
        converted = _from_http_exception(request, exc)
        if converted is None:
            exc.headers[HEADER] = request_id_of(request)
            raise  # redirects and other deliberate HTTP answers pass through
        response = error_response(request, converted)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            # RFC 9110: a 405 lists the methods the resource does support.
            response.headers["Allow"] = allow_header(exc)
        return response
    except Exception:
        log.exception("request %s failed", request_id_of(request))
        return error_response(request, LunaError(INTERNAL, "internal error; see the facade log"))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: renders errors, stamps Luna-Request-Id on every answer, logs the request."""
    started = time.perf_counter()
    response = await _answer(request, handler)
    request_id = request_id_of(request)
    if not response.prepared:  # a WebSocket handler stamps its own before the upgrade
        response.headers[HEADER] = request_id
    elapsed = time.perf_counter() - started
    observe(request, response.status, elapsed)
    access_log.info(
        "%s %s %s %.1f ms request_id=%s",
        request.method,
        request.path_qs,
        response.status,
        elapsed * 1000,
        request_id,
    )
    return response
