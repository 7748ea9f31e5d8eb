"""Helpers of the tests of documented behaviour (tests/e2e/test_documented_*.py, test_config_keys.py).

Metrics are read as Prometheus samples keyed by name and label set, so that a test compares one
series before and after what it did, never a session-wide total. The HTTP source serves a clip
from a thread of the test process, so that a stream can have a network reference (with
credentials) without a camera.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from prometheus_client.parser import text_string_to_metric_families

from lva_common.errors import LunaError, from_trailers

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Prometheus text -> {(sample name, labels): value}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return samples


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return parse_metrics(await resp.text())


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


async def poll(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """The first truthy result of ``check``; fails with ``what`` (and the last result) at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: still {result!r} after {timeout} s"
        await asyncio.sleep(0.1)


async def delete_stream(http: aiohttp.ClientSession, base_url: str, stream_id: str) -> None:
    async with http.delete(f"{base_url}/1/streams/{stream_id}") as resp:
        assert resp.status in (204, 404), await resp.text()


def luna_error(error: grpc.aio.AioRpcError) -> LunaError:
    """The LUNA error an lva core sent in a failed call's trailers (the test fails if none)."""
    found = from_trailers(error.trailing_metadata())
    assert found is not None, f"no LUNA error in {error.code()} {error.details()}"
    return found


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test's output is not the place for an access log


@contextmanager
def http_files(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on a free loopback port; yields ``http://127.0.0.1:<port>``."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="http-files", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def ws_messages(
    http: aiohttp.ClientSession, url: str, until: Callable[[dict[str, Any]], bool], timeout: float
) -> list[dict[str, Any]]:
    """Messages of an open /1/ws until one satisfies ``until`` (included)."""
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout), http.ws_connect(url) as ws:
        async for message in ws:
            assert message.type == aiohttp.WSMsgType.TEXT, message
            messages.append(json.loads(message.data))
            if until(messages[-1]):
                return messages
    raise AssertionError(f"the socket closed first: {messages}")


@contextmanager
def silent_port() -> Iterator[str]:
    """A loopback port that accepts connections and never says a word (a Triton that hangs);
    yields ``127.0.0.1:<port>``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, name="silent-port", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()
