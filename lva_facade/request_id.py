"""The ``Luna-Request-Id`` header: validated, generated when absent, echoed on every answer.

The error middleware sits outside this one and writes the header onto every answer, error
answers included, from ``request[REQUEST_KEY]``, which this middleware sets first thing.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from lva_common.errors import BAD_REQUEST_ID, LunaError
from lva_common.logs import request_id_var

HEADER = "Luna-Request-Id"
METADATA_KEY = "luna-request-id"
REQUEST_KEY = web.RequestKey("luna_request_id", str)
PATTERN = re.compile(r"^[0-9]{10},[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_request_id() -> str:
    return f"{int(time.time())},{uuid.uuid4()}"


def request_id_of(request: web.Request) -> str:
    value = request.get(REQUEST_KEY)
    if value is None:
        value = new_request_id()
        request[REQUEST_KEY] = value
    return value


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(HEADER)
    valid = given is not None and PATTERN.match(given) is not None
    request[REQUEST_KEY] = given if given is not None and valid else new_request_id()
    # Each request runs in its own task, so the id stays bound for exactly this request's logs.
    request_id_var.set(request[REQUEST_KEY])
    if given is not None and not valid:
        raise LunaError(BAD_REQUEST_ID, f"{HEADER} {given!r} does not match {PATTERN.pattern}")
    return await handler(request)
