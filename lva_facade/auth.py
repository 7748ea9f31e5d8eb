"""Optional bearer-token authentication of the facade (``facade.auth_token``).

With a token configured, every request must carry ``Authorization: Bearer <token>``, the
WebSocket upgrade of ``/1/ws`` included, except the routes a probe, a scraper or a reader of the
manual needs without credentials: ``/healthcheck``, ``/version``, ``/metrics`` and ``/docs/...``.
Whether a request is public is decided by the route it matched, not by its raw path, so that
``/docs/../1/config`` or an encoded slash cannot pass as a document. An unknown path needs the
token too: without it, a 401 rather than a 404 tells nothing about which routes exist.

The token is compared in constant time (hmac.compare_digest). It is not accepted in the query
string (``?access_token=``): URLs end up in access logs, proxy logs and browser history.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from lva_common.errors import UNAUTHORIZED, LunaError
from lva_facade.request_id import Handler

PUBLIC_PATHS = frozenset({"/healthcheck", "/version", "/metrics"})


def is_public(request: web.Request) -> bool:
    """Whether the route the request matched is one that needs no token."""
    resource = request.match_info.route.resource
    if resource is None:  # no route matched (404, 405)
        return False
    path = resource.canonical
    return path in PUBLIC_PATHS or path == "/docs" or path.startswith("/docs/")


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (the scheme is case-insensitive)."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def auth_middleware(token: str) -> Middleware:
    """The middleware for ``facade.auth_token``; with an empty token it lets everything through."""
    expected = token.encode()

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected and not is_public(request):
            given = bearer_token(request.headers.get("Authorization"))
            if given is None:
                raise LunaError(UNAUTHORIZED, "this route needs an Authorization: Bearer <token> header")
            if not hmac.compare_digest(given.encode(), expected):
                raise LunaError(UNAUTHORIZED, "the bearer token is not valid")
        return await handler(request)

    return authenticate
