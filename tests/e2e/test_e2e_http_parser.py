"""Requests the HTTP parser refuses still get a LUNA body and a Luna-Request-Id.

Raw bytes over a socket: an HTTP client library would refuse to send most of these.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from lva_facade.request_id import PATTERN
from lva_testkit.stack import Service
from lva_testkit.streams import assert_luna_error


async def _exchange(facade: Service, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = facade.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            body = await reader.readexactly(int(headers["content-length"]))
    finally:
        writer.close()
    return status, headers, body


BAD_REQUESTS = {
    "non-ASCII bytes in the query": b"GET /1/streams?name=\xff\xfe HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "a header over 8 KB": b"GET /version HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    "Content-Length that is no number": (
        b"POST /1/streams HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: abc\r\n\r\n{}"
    ),
    "a request line that is not HTTP": b"GET /version HTTP/9.x\r\nHost: localhost\r\n\r\n",
    "bad chunked encoding": (
        b"POST /1/streams HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_parser_refusals_are_luna_errors_with_a_request_id(
    facade: Service, http: aiohttp.ClientSession, base_url: str, case: str
) -> None:
    status, headers, body = await _exchange(facade, BAD_REQUESTS[case])
    assert status == 400, (status, body)
    assert headers["content-type"].startswith("application/json"), headers
    assert PATTERN.match(headers["luna-request-id"]), headers
    payload = json.loads(body)
    assert_luna_error(payload, 47013)
    assert payload["detail"].startswith("malformed HTTP request")
    # The facade serves the next client as before.
    async with http.get(f"{base_url}/version") as resp:
        assert resp.status == 200


async def test_parser_refusals_are_counted(
    facade: Service, http: aiohttp.ClientSession, base_url: str
) -> None:
    series = 'lva_http_requests_total{error_code="47013",method="unparsed",route="unparsed",status="400"}'

    async def count() -> float:
        async with http.get(f"{base_url}/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith(series):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = await count()
    await _exchange(facade, BAD_REQUESTS["Content-Length that is no number"])
    assert await count() == before + 1
