"""The stream API as tests use it: create streams over REST, wait for a status, read the WebSocket.

Each helper asserts what a well-behaved agent answers (201 on create, 200 on read), so a test
that uses it fails at the request that went wrong, with the agent's answer in the message.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import websockets

# The statuses a stream never leaves by itself.
FINAL = {"done", "failure", "stop"}
# people_counter on every frame, an event per frame whatever the count: a live stream's events
# show at once that it runs (and runs again after a restart).
EVERY_FRAME_COUNTER = [
    {
        "analytic_name": "people_counter",
        "parameters": {
            "probe_count": 1,
            "people_count_threshold": 0,
            "rate": {"period": 1, "unit": "frame"},
            "event_policy": {"trigger": "period", "interval": 0.01},
        },
    }
]


def file_stream(path: Path, analytics: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": path.name,
        "data": {
            "reference": str(path),
            "type": "videofile",
            "frame_processing": {"rate": {"period": 5, "unit": "frame"}},
        },
        "analytics": analytics,
    }
    body.update(extra)
    return body


async def create(http: aiohttp.ClientSession, base_url: str, body: dict[str, Any]) -> str:
    async with http.post(f"{base_url}/1/streams", json=body) as resp:
        payload = await resp.json()
        assert resp.status == 201, payload
    assert payload["url"] == f"/1/streams/{payload['stream_id']}"
    return str(payload["stream_id"])


async def get(http: aiohttp.ClientSession, base_url: str, stream_id: str) -> dict[str, Any]:
    async with http.get(f"{base_url}/1/streams/{stream_id}") as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def patch(http: aiohttp.ClientSession, base_url: str, stream_id: str, status: str) -> dict[str, Any]:
    async with http.patch(f"{base_url}/1/streams/{stream_id}", json={"status": status}) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def delete(http: aiohttp.ClientSession, base_url: str, stream_id: str) -> None:
    """Delete a stream; for a test's ``finally``, so one failure leaves no stream on a shared core.

    A stream the test has deleted already (404) is fine: this is cleanup, not the assertion.
    """
    async with http.delete(f"{base_url}/1/streams/{stream_id}") as resp:
        assert resp.status in (204, 404), await resp.text()


async def wait_status(
    http: aiohttp.ClientSession, base_url: str, stream_id: str, wanted: set[str], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stream = await get(http, base_url, stream_id)
        if stream["status"] in wanted:
            return stream
        assert time.monotonic() < deadline, (
            f"stream stayed {stream['status']} ({stream['error']}), wanted {wanted}"
        )
        await asyncio.sleep(0.2)


async def read_ws(
    uri: str,
    until: set[str] | None = None,
    timeout: float = 60.0,
    subscribed: asyncio.Event | None = None,
) -> list[dict[str, Any]]:
    """Read messages as the seed's sample client does, until a status in ``until`` (or close).

    ``subscribed`` is set once the first message is in: see :func:`watch`.
    """
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout), websockets.connect(uri) as websocket:
        while True:
            try:
                data = await websocket.recv()
            except websockets.ConnectionClosed:
                return messages
            message = json.loads(data)
            messages.append(message)
            if subscribed is not None:
                subscribed.set()
            if until and message["stream_status"] in until:
                return messages


async def watch(
    uri: str, until: set[str] | None = None, timeout: float = 60.0
) -> asyncio.Task[list[dict[str, Any]]]:
    """A :func:`read_ws` task, returned once the core has subscribed it to the stream's events.

    The proof is the first message. The core subscribes a watch to the event bus before it
    sends the stream's current status, the first message of every watch (docs/streams.md), so
    everything published after that message reaches this reader: a test may act at once,
    where a fixed sleep loses the first messages to a subscriber that is late on a busy machine.
    The task's result includes that first message.
    """
    subscribed = asyncio.Event()
    reader = asyncio.create_task(read_ws(uri, until, timeout, subscribed))
    waiting = asyncio.create_task(subscribed.wait())
    try:
        await asyncio.wait({reader, waiting}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    if subscribed.is_set():
        return reader
    if reader.done():
        # Closed, or failed, before any message: the reader's own error says why.
        messages = reader.result()
        raise AssertionError(f"{uri} closed before its first message: {messages}")
    reader.cancel()
    raise AssertionError(f"no first message on {uri} within {timeout} s")


def subscriber_count(metrics_text: str, stream_id: str) -> int:
    """``lva_event_subscribers`` of one stream in the core's /metrics text (0 when absent)."""
    series = f'lva_event_subscribers{{stream_id="{stream_id}"}} '
    for line in metrics_text.splitlines():
        if line.startswith(series):
            return int(float(line[len(series) :]))
    return 0


async def wait_subscribers(
    http: aiohttp.ClientSession, metrics_url: str, stream_id: str, count: int, timeout: float = 20.0
) -> None:
    """Wait until the core counts ``count`` event subscribers of the stream (its /metrics).

    For subscribers that read nothing, and so never see their first message.
    """
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(metrics_url) as resp:
            now = subscriber_count(await resp.text(), stream_id)
        if now >= count:
            return
        assert time.monotonic() < deadline, f"{now} subscribers of {stream_id}, wanted {count}"
        await asyncio.sleep(0.1)


def statuses(messages: list[dict[str, Any]]) -> list[str]:
    """The status sequence, consecutive repeats collapsed."""
    sequence: list[str] = []
    for message in messages:
        if not sequence or sequence[-1] != message["stream_status"]:
            sequence.append(message["stream_status"])
    return sequence


def assert_luna_error(body: dict[str, object], code: int) -> None:
    """``body`` is a LUNA error body with ``code``, a description, a detail and its manual link."""
    assert set(body) >= {"error_code", "desc", "detail", "link"}, body
    assert body["error_code"] == code, body
    assert isinstance(body["desc"], str) and body["desc"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert str(body["link"]).endswith(f"/docs/dev/errors.html#error-{code}"), body["link"]
