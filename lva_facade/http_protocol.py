"""Answers to requests aiohttp's HTTP parser refuses, in the shape of every other answer.

A request line with non-ASCII bytes, a header longer than aiohttp's 8190-byte limit or a
``Content-Length: abc`` never reaches the application: aiohttp answers it from its protocol
handler with a ``text/plain`` body, before any middleware could add the LUNA body or the
``Luna-Request-Id`` header. Its ``handle_error`` is the one place such answers are made, so the
runner here installs a handler whose ``handle_error`` renders a LUNA error (47013 for a request
the parser refused, 1 for anything else that reaches it) and counts it like any other answer.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from lva_common.errors import BAD_HTTP, DEADLINE, INTERNAL, LunaError
from lva_common.signals import stop_event
from lva_facade.error_middleware import error_link
from lva_facade.metrics import HTTP_REQUESTS
from lva_facade.request_id import HEADER, new_request_id

log = logging.getLogger("lva_facade")
# The method and route labels of a request that was never parsed: the raw method may be any
# bytes, and a metric label taken from it would be unbounded.
UNPARSED = "unparsed"


def parser_error(status: int, message: str | None, exc: BaseException | None) -> LunaError:
    if status == 504:  # a handler timed out (aiohttp's own answer to asyncio.TimeoutError)
        return LunaError(DEADLINE, "the request did not finish in time")
    if status >= 500:
        return LunaError(INTERNAL, "internal error; see the facade log")
    reason = message or (str(exc) if exc is not None else "") or "not a valid HTTP request"
    # aiohttp's messages quote the offending bytes, shortened; one line is enough for a client.
    return LunaError(BAD_HTTP, f"malformed HTTP request: {reason.splitlines()[0][:300]}")


class LunaRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # As aiohttp does: part of an answer is out, another cannot follow.
            raise ConnectionError("a response is already under way; cannot send an error answer")
        error = parser_error(status, message, exc)
        request_id = new_request_id()  # the request's own header, if any, was not parsed
        if status >= 500:
            log.error("request_id=%s: %s", request_id, error.detail, exc_info=exc)
        else:
            # A client's malformed request is not the facade's error: one line, no traceback.
            log.info("%d from the HTTP parser, request_id=%s: %s", status, request_id, error.detail)
        HTTP_REQUESTS.labels(UNPARSED, UNPARSED, str(error.spec.http_status), str(error.code)).inc()
        response = web.json_response(
            error.body(error_link(request, error.code)),  # type: ignore[arg-type]  # a BaseRequest suffices
            status=error.spec.http_status,
            headers={HEADER: request_id, **error.headers()},
        )
        response.force_close()  # as aiohttp does: the connection's framing cannot be trusted
        return response


class LunaServer(web.Server):
    def __call__(self) -> RequestHandler:
        return LunaRequestHandler(self, loop=self._loop, **self._kwargs)


class LunaAppRunner(web.AppRunner):
    """An AppRunner whose connections answer parser errors with LUNA bodies."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application's own server, its handler and settings unchanged; only the class that
        # makes each connection's handler differs, and it adds no state of its own.
        server.__class__ = LunaServer
        return server


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut down as aiohttp's run_app would."""
    # Open WebSockets would otherwise hold the shutdown for a minute.
    runner = LunaAppRunner(app, access_log=None, shutdown_timeout=3.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await stop_event().wait()
    finally:
        await runner.cleanup()
