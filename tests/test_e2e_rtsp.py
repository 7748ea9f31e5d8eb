"""Live RTSP sources through the real stack: a real GStreamer RTSP server, killed, frozen, late."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import Service, free_port
from tests.rtsp_server import RtspServer
from tests.streams_helpers import clip, create, get, read_ws, wait_status

COUNTER = [
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
RESTART = {"restart": 1, "attempt_count": 30, "delay": 0.5}


def live_stream(url: str) -> dict[str, object]:
    return {
        "name": "camera",
        "data": {
            "reference": url,
            "type": "stream",
            "frame_processing": {"rate": {"period": 5, "unit": "frame"}},
        },
        "analytics": COUNTER,
        "autorestart": RESTART,
    }


@pytest.fixture(scope="module")
def live_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip(tmp_path_factory.mktemp("rtsp"), "live.mp4", seconds=4.0)


@pytest.fixture
def rtsp(live_clip: Path, log_dir: Path) -> Iterator[RtspServer]:
    server = RtspServer(live_clip, log_dir / f"rtsp-{time.monotonic_ns()}.log")
    yield server
    server.stop()


async def _processed(http: aiohttp.ClientSession, base_url: str, stream_id: str) -> int:
    return int((await get(http, base_url, stream_id))["statistics"]["frames_processed"])


async def _wait_processing(
    http: aiohttp.ClientSession, base_url: str, stream_id: str, timeout: float = 30
) -> int:
    start = await _processed(http, base_url, stream_id)
    deadline = time.monotonic() + timeout
    while (now := await _processed(http, base_url, stream_id)) <= start:
        assert time.monotonic() < deadline, "no frames processed"
        await asyncio.sleep(0.3)
    return now


async def _delete(http: aiohttp.ClientSession, base_url: str, stream_id: str) -> None:
    async with http.delete(f"{base_url}/1/streams/{stream_id}") as resp:
        assert resp.status == 204


async def test_killed_server_restarts_and_recovers(
    http: aiohttp.ClientSession, base_url: str, rtsp: RtspServer
) -> None:
    rtsp.start()
    stream_id = await create(http, base_url, live_stream(rtsp.url))
    await wait_status(http, base_url, stream_id, {"in_progress"}, 30)
    await _wait_processing(http, base_url, stream_id)
    rtsp.stop()
    lost = await wait_status(http, base_url, stream_id, {"restart"}, 10)
    assert lost["error"]
    rtsp.start()  # the same address, the stream untouched
    back = await wait_status(http, base_url, stream_id, {"in_progress"}, 40)
    assert back["statistics"]["reconnects"] >= 1 and back["error"] is None
    await _wait_processing(http, base_url, stream_id)
    await _delete(http, base_url, stream_id)


async def test_frozen_server_is_detected_within_the_timeout(
    http: aiohttp.ClientSession, base_url: str, rtsp: RtspServer
) -> None:
    rtsp.start()
    stream_id = await create(http, base_url, live_stream(rtsp.url))
    await wait_status(http, base_url, stream_id, {"in_progress"}, 30)
    await _wait_processing(http, base_url, stream_id)
    rtsp.freeze()
    frozen_at = time.monotonic()
    lost = await wait_status(http, base_url, stream_id, {"restart"}, 15)
    detected_after = time.monotonic() - frozen_at
    assert detected_after < 5.0 + 4.0  # streams.read_timeout (5 s) plus polling slack
    assert "timeout" in lost["error"]
    rtsp.thaw()
    await wait_status(http, base_url, stream_id, {"in_progress"}, 40)
    await _delete(http, base_url, stream_id)


async def test_stream_created_while_server_is_down_comes_up(
    http: aiohttp.ClientSession, base_url: str, rtsp: RtspServer
) -> None:
    rtsp.port = free_port()  # nothing listens there yet
    stream_id = await create(http, base_url, live_stream(rtsp.url))
    waiting = await wait_status(http, base_url, stream_id, {"restart"}, 10)
    assert "connection_refused" in waiting["error"]
    rtsp.start()
    await wait_status(http, base_url, stream_id, {"in_progress"}, 40)
    await _wait_processing(http, base_url, stream_id)
    await _delete(http, base_url, stream_id)


def _stalled_ws_client(address: str, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads a byte."""
    host, port = address.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert b"101" in sock.recv(12)
    return sock


async def test_slow_ws_client_does_not_delay_a_fast_one(
    http: aiohttp.ClientSession, base_url: str, facade: Service, live_clip: Path
) -> None:
    body = {
        "data": {
            "reference": str(live_clip),
            "type": "videofile",
            "frame_processing": {"rate": {"period": 1}},
        },
        "analytics": COUNTER,
        "status": "pause",
    }
    stream_id = await create(http, base_url, body)
    slow = _stalled_ws_client(facade.address, f"/1/ws?stream_id={stream_id}")
    try:
        fast = asyncio.create_task(
            read_ws(f"ws://{facade.address}/1/ws?stream_id={stream_id}", until={"done"}, timeout=120)
        )
        await asyncio.sleep(0.5)
        async with http.patch(f"{base_url}/1/streams/{stream_id}", json={"status": "pending"}) as resp:
            assert resp.status == 200
        messages = await fast
        stream = await get(http, base_url, stream_id)
        events = [m for m in messages if m["analytics_results"]]
        # The fast client got one event per processed frame, all of them, while the slow one read nothing.
        assert stream["status"] == "done"
        assert len(events) == stream["statistics"]["frames_processed"] == 100
        assert all("lost_messages" not in m for m in messages)
    finally:
        slow.close()
    await _delete(http, base_url, stream_id)


def test_clip_truth_is_consistent(live_clip: Path) -> None:
    truth = json.loads(live_clip.with_name(live_clip.name + ".truth.json").read_text())
    assert truth["frame_count"] == 100 and len(truth["frames"]) == 100
