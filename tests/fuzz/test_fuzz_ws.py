"""Malformed WebSocket handshakes against ``/1/ws``, written byte by byte over raw TCP.

Every request must end in a clean HTTP error (a LUNA body whenever the answer is JSON, and for
every error the facade's own handler gives) or a closed connection: never a 5xx, a hang or a
crash. Afterwards the facade must be healthy: ``/healthcheck`` answers 200 and a normal
WebSocket to a real stream still gets the stream's status.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
import websockets

from lva_common.aio import wait_within
from lva_common.errors import REGISTRY
from lva_testkit.clips import clip
from lva_testkit.stack import Service
from lva_testkit.streams import create

KEY = base64.b64encode(os.urandom(16)).decode()
LUNA_KEYS = {"error_code": int, "desc": str, "detail": str, "link": str}


@dataclass
class Answer:
    """What came back on the socket: an HTTP response, or nothing before the server closed it."""

    raw: bytes
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def closed_silently(self) -> bool:
        return self.status is None


def _parse(raw: bytes) -> Answer:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/"):
        assert not raw.strip(), f"not an HTTP response: {raw[:300]!r}"
        return Answer(raw)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(body)))
    return Answer(raw, status, headers, body[:length])


async def exchange(address: str, data: bytes, *, half_close: bool = False, timeout: float = 20) -> Answer:
    """Send ``data``, read until the server closes or one whole response has arrived."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        raw = b""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                raw += chunk
                head, sep, body = raw.partition(b"\r\n\r\n")
                if sep and b" 101 " in head.split(b"\r\n", 1)[0]:
                    break  # upgraded: nothing more to read for a handshake test
                if sep and b"content-length:" in head.lower():
                    length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                    if len(body) >= length:
                        break
        return _parse(raw)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def request(
    target: str,
    *,
    version: str = "HTTP/1.1",
    upgrade: str | None = "websocket",
    connection: str | None = "Upgrade",
    key: str | None = KEY,
    ws_version: str | None = "13",
    extra: list[str] | None = None,
) -> bytes:
    lines = [f"GET {target} {version}", "Host: 127.0.0.1"]
    if upgrade is not None:
        lines.append(f"Upgrade: {upgrade}")
    if connection is not None:
        lines.append(f"Connection: {connection}")
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if ws_version is not None:
        lines.append(f"Sec-WebSocket-Version: {ws_version}")
    lines.extend(extra or [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def assert_luna(answer: Answer, status: int, code: int | None = None) -> dict[str, object]:
    assert answer.status == status, answer.raw[:500]
    assert answer.headers.get("content-type", "").startswith("application/json"), answer.raw[:500]
    assert answer.headers.get("luna-request-id"), answer.headers
    body = json.loads(answer.body)
    for key, kind in LUNA_KEYS.items():
        assert isinstance(body.get(key), kind), body
    assert REGISTRY[body["error_code"]].http_status == status, body
    if code is not None:
        assert body["error_code"] == code, body
    return dict(body)


def assert_clean(answer: Answer) -> None:
    """A 4xx (LUNA when JSON) or a connection closed without a word; never a 5xx or an upgrade."""
    if answer.closed_silently:
        return
    assert answer.status is not None and 400 <= answer.status < 500, answer.raw[:500]
    if answer.headers.get("content-type", "").startswith("application/json"):
        assert_luna(answer, answer.status)


@pytest.fixture(scope="module")
async def real_stream(facade: Service, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A paused stream of a real clip: it exists, costs nothing, and its watchers get its status."""
    path = clip(tmp_path_factory.mktemp("ws-fuzz"))
    base = f"http://{facade.address}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        body = {"name": "ws-fuzz", "data": {"reference": str(path), "type": "videofile"}, "status": "pause"}
        stream_id = await create(http, base, body)
        yield stream_id
        async with http.delete(f"{base}/1/streams/{stream_id}") as resp:
            assert resp.status == 204, await resp.text()


async def assert_healthy(facade: Service, stream_id: str) -> None:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.get(f"http://{facade.address}/healthcheck") as resp,
    ):
        assert resp.status == 200, await resp.text()
    async with websockets.connect(f"ws://{facade.address}/1/ws?stream_id={stream_id}", open_timeout=30) as ws:
        first = json.loads(await wait_within(ws.recv(), 30))
    assert first["stream_status"] == "pause", first
    assert facade.proc.poll() is None, "the facade exited"


# ---------------------------------------------------------------- handshakes that reach the handler


async def test_missing_stream_id_is_12014(facade: Service) -> None:
    assert_luna(await exchange(facade.address, request("/1/ws")), 400, 12014)


@pytest.mark.parametrize(
    "stream_id",
    ["", "not-a-uuid", "1234", "%00", "%ED%A0%80", "'%20OR%201=1", "x" * 2000, "..%2F..%2Fetc"],
)
async def test_bad_stream_id_is_12012(facade: Service, stream_id: str) -> None:
    assert_luna(await exchange(facade.address, request(f"/1/ws?stream_id={stream_id}")), 400, 12012)


async def test_unknown_stream_is_404_before_upgrade(facade: Service) -> None:
    answer = await exchange(facade.address, request(f"/1/ws?stream_id={uuid.uuid4()}"))
    assert_luna(answer, 404, 47004)


async def test_unknown_query_parameter_is_12012(facade: Service, real_stream: str) -> None:
    answer = await exchange(facade.address, request(f"/1/ws?stream_id={real_stream}&x=1"))
    assert_luna(answer, 400, 12012)


@pytest.mark.parametrize("account_id", ["%ED%A0%80", "%00", "a" * 5000, str(uuid.uuid4())])
async def test_odd_account_ids_are_clean(facade: Service, real_stream: str, account_id: str) -> None:
    answer = await exchange(facade.address, request(f"/1/ws?stream_id={real_stream}&account_id={account_id}"))
    assert answer.status in (400, 403, 404), answer.raw[:500]
    assert_luna(answer, int(answer.status))


async def test_bad_request_id_is_47001(facade: Service, real_stream: str) -> None:
    answer = await exchange(
        facade.address, request(f"/1/ws?stream_id={real_stream}", extra=["Luna-Request-Id: nope"])
    )
    assert_luna(answer, 400, 47001)


@pytest.mark.parametrize(
    "variant",
    [
        {"key": None},
        {"key": "not base64!"},
        {"key": base64.b64encode(b"short").decode()},
        {"key": ""},
        {"ws_version": None},
        {"ws_version": "12"},  # aiohttp also speaks the drafts' 7 and 8, whose framing is 13's
        {"ws_version": "14"},
        {"ws_version": "banana"},
        {"upgrade": None},
        {"upgrade": "h2c"},
        {"connection": None},
        {"connection": "keep-alive"},
        {"upgrade": None, "connection": None, "key": None, "ws_version": None},
        {"version": "HTTP/1.0"},
    ],
    ids=lambda variant: ",".join(f"{k}={v}" for k, v in variant.items()),
)
async def test_malformed_handshake_to_a_real_stream(
    facade: Service, real_stream: str, variant: dict[str, str | None]
) -> None:
    """The query is fine and the stream exists: only the handshake itself is wrong.

    Each is refused before the upgrade with error 47012 (a LUNA body, never aiohttp's text/plain
    400) and the request id, and never upgraded.
    """
    answer = await exchange(facade.address, request(f"/1/ws?stream_id={real_stream}", **variant))  # type: ignore[arg-type]
    assert answer.status != 101, f"upgraded a malformed handshake {variant}: {answer.raw[:300]!r}"
    assert_luna(answer, 400, 47012)
    assert answer.headers.get("luna-request-id"), answer.headers
    assert_clean(answer)


# ---------------------------------------------------------------- requests the HTTP parser refuses


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\xff\x16\x03\x01garbage\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a TLS ClientHello
        b"GET /1/ws HTTP/9.9\r\n\r\n",
        b"GET /1/ws\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /1/ws HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
        b"GET /1/ws HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET /1/ws HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\r\n\r\n\r\n\r\n",
    ],
)
async def test_garbage_gets_a_clean_answer(facade: Service, data: bytes) -> None:
    # Closing our side after the bytes: a parser still waiting for a request line sees the end.
    assert_clean(await exchange(facade.address, data, half_close=True))


async def test_oversized_headers_are_refused(facade: Service, real_stream: str) -> None:
    target = f"/1/ws?stream_id={real_stream}"
    for oversized in (
        request(target, extra=[f"X-Fill: {'a' * 9000}"]),  # one field past aiohttp's 8190
        request(target, extra=[f"X-Fill-{i}: a" for i in range(200)]),  # past 128 headers
        request(target + "&account_id=" + "a" * 70000),  # a request line past 8190
    ):
        answer = await exchange(facade.address, oversized, half_close=True)
        assert answer.status != 101, answer.raw[:300]
        assert_clean(answer)


@pytest.mark.parametrize("cut", [5, 20, 60])
async def test_half_sent_request_then_close(facade: Service, real_stream: str, cut: int) -> None:
    data = request(f"/1/ws?stream_id={real_stream}")
    assert_clean(await exchange(facade.address, data[:cut], half_close=True))


async def test_many_abandoned_handshakes_leave_the_facade_healthy(facade: Service, real_stream: str) -> None:
    """Upgrade, then vanish without a close frame; and connections that never finish their request."""
    data = request(f"/1/ws?stream_id={real_stream}")
    upgraded = await asyncio.gather(*(exchange(facade.address, data) for _ in range(20)))
    assert all(answer.status == 101 for answer in upgraded), [a.raw[:100] for a in upgraded]
    stalled = []
    for _ in range(10):
        _, writer = await asyncio.open_connection(*facade.address.rsplit(":", 1))
        writer.write(data[:30])
        stalled.append(writer)
    await asyncio.sleep(0.5)
    await assert_healthy(facade, real_stream)
    for writer in stalled:
        writer.close()


async def test_facade_healthy_after_malformed_handshakes(facade: Service, real_stream: str) -> None:
    await assert_healthy(facade, real_stream)
