"""Live RTSP sources through the real stack: a real GStreamer RTSP server, killed, frozen, late."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import websockets

from lva_testkit.clips import clip
from lva_testkit.ports import refused_port
from lva_testkit.rtsp_server import RtspServer
from lva_testkit.stack import Service
from lva_testkit.streams import EVERY_FRAME_COUNTER, create, delete, get, wait_status, wait_subscribers, watch

RESTART = {"restart": 1, "attempt_count": 30, "delay": 0.5}


def live_stream(url: str) -> dict[str, object]:
    return {
        "name": "camera",
        "data": {
            "reference": url,
            "type": "stream",
            "frame_processing": {"rate": {"period": 5, "unit": "frame"}},
        },
        "analytics": EVERY_FRAME_COUNTER,
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
    """In ``finally``: a live stream left behind would retry its camera on the shared core."""
    await delete(http, base_url, stream_id)


async def test_killed_server_restarts_and_recovers(
    http: aiohttp.ClientSession, base_url: str, rtsp: RtspServer
) -> None:
    rtsp.start()
    stream_id = await create(http, base_url, live_stream(rtsp.url))
    try:
        await wait_status(http, base_url, stream_id, {"in_progress"}, 30)
        await _wait_processing(http, base_url, stream_id)
        rtsp.stop()
        lost = await wait_status(http, base_url, stream_id, {"restart"}, 10)
        assert lost["error"]
        rtsp.start()  # the same address, the stream untouched
        back = await wait_status(http, base_url, stream_id, {"in_progress"}, 40)
        assert back["statistics"]["reconnects"] >= 1 and back["error"] is None
        await _wait_processing(http, base_url, stream_id)
    finally:
        await _delete(http, base_url, stream_id)


async def test_frozen_server_is_detected_within_the_timeout(
    http: aiohttp.ClientSession, base_url: str, rtsp: RtspServer
) -> None:
    rtsp.start()
    stream_id = await create(http, base_url, live_stream(rtsp.url))
    try:
        await wait_status(http, base_url, stream_id, {"in_progress"}, 30)
        await _wait_processing(http, base_url, stream_id)
        rtsp.freeze()
        frozen_at = time.monotonic()
        lost = await wait_status(http, base_url, stream_id, {"restart"}, 15)
        detected_after = time.monotonic() - frozen_at
        # The bound is the point: streams.read_timeout (5 s), not the open timeout or never, plus
        # slack for the 0.2 s status polling and a loaded machine.
        assert detected_after < 5.0 + 4.0
        assert "timeout" in lost["error"]
        rtsp.thaw()
        await wait_status(http, base_url, stream_id, {"in_progress"}, 40)
    finally:
        await _delete(http, base_url, stream_id)


async def test_decode_fps_falls_to_zero_when_the_camera_freezes(
    http: aiohttp.ClientSession, base_url: str, rtsp: RtspServer, core: Service
) -> None:
    rtsp.start()
    stream_id = await create(http, base_url, live_stream(rtsp.url))
    try:
        await wait_status(http, base_url, stream_id, {"in_progress"}, 30)
        await _wait_processing(http, base_url, stream_id)
        running = await get(http, base_url, stream_id)
        assert running["statistics"]["decode_fps"] > 5  # a 25 fps camera
        rtsp.freeze()
        frozen_at = time.monotonic()
        # decode_fps is over the last second: 0 a second after the last frame, well inside
        # streams.read_timeout (5 s), while the stream is still in_progress.
        while (frozen := await get(http, base_url, stream_id))["statistics"]["decode_fps"] != 0:
            assert time.monotonic() - frozen_at < 4.0, frozen["statistics"]
            await asyncio.sleep(0.1)
        assert frozen["status"] == "in_progress", frozen
        async with http.get(f"http://127.0.0.1:{core.metrics_port}/metrics") as resp:
            text = await resp.text()
        series = f'lva_stream_decode_fps{{stream_id="{stream_id}"}}'
        assert f"{series} 0.0" in text, [line for line in text.splitlines() if series in line]
        rtsp.thaw()
    finally:
        await _delete(http, base_url, stream_id)


async def test_stream_created_while_server_is_down_comes_up(
    http: aiohttp.ClientSession, base_url: str, rtsp: RtspServer
) -> None:
    with refused_port() as port:  # held until the camera starts there: nobody else takes it
        rtsp.port = port
        stream_id = await create(http, base_url, live_stream(rtsp.url))
        try:
            waiting = await wait_status(http, base_url, stream_id, {"restart"}, 10)
            assert "connection_refused" in waiting["error"]
        except BaseException:
            await _delete(http, base_url, stream_id)
            raise
    try:
        rtsp.start()
        await wait_status(http, base_url, stream_id, {"in_progress"}, 40)
        await _wait_processing(http, base_url, stream_id)
    finally:
        await _delete(http, base_url, stream_id)


async def test_an_upper_case_scheme_is_a_camera_like_any_other(
    http: aiohttp.ClientSession, base_url: str, rtsp: RtspServer
) -> None:
    rtsp.start()
    assert rtsp.url.startswith("rtsp://")
    stream_id = await create(http, base_url, live_stream("RTSP" + rtsp.url[len("rtsp") :]))
    try:
        running = await wait_status(http, base_url, stream_id, {"in_progress"}, 30)
        assert running["data"]["reference"] == rtsp.url  # stored and shown as it is opened
        await _wait_processing(http, base_url, stream_id)
    finally:
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
    http: aiohttp.ClientSession, base_url: str, facade: Service, core: Service, live_clip: Path
) -> None:
    body = {
        "data": {
            "reference": str(live_clip),
            "type": "videofile",
            "frame_processing": {"rate": {"period": 1}},
        },
        "analytics": EVERY_FRAME_COUNTER,
        "status": "pause",
    }
    stream_id = await create(http, base_url, body)
    slow = _stalled_ws_client(facade.address, f"/1/ws?stream_id={stream_id}")
    try:
        fast = await watch(f"ws://{facade.address}/1/ws?stream_id={stream_id}", until={"done"}, timeout=120)
        # The slow client reads nothing, so its first message proves nothing: the core's count of
        # the stream's subscribers does (both clients), before the stream starts.
        metrics_url = f"http://127.0.0.1:{core.metrics_port}/metrics"
        await wait_subscribers(http, metrics_url, stream_id, 2)
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


@pytest.fixture(scope="module")
def hd_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip(tmp_path_factory.mktemp("rtsp-hd"), "hd.mp4", seconds=4.0, size=(1280, 720))


async def test_live_stream_never_builds_lag(
    http: aiohttp.ClientSession, base_url: str, facade: Service, hd_clip: Path, log_dir: Path
) -> None:
    # 720p at 25 fps, every frame, with both detectors and age/gender. Whether the analysis keeps
    # up with the camera depends on the machine (slower here on a CPU, perhaps not on a GPU), so
    # what is asserted holds either way: the frames analysed keep pace with the camera (the
    # newest frame wins), frames the analysis has no time for are dropped and counted, and the
    # frame age stays within a few frames' analysis time.
    server = RtspServer(hd_clip, log_dir / "rtsp-hd.log").start()
    try:
        body = live_stream(server.url)
        body["data"]["frame_processing"] = {"rate": {"period": 1, "unit": "frame"}}  # type: ignore[index]
        body["analytics"] = [
            *EVERY_FRAME_COUNTER,
            {"analytic_name": "human_tracking", "parameters": {"targets": ["ags"]}},
        ]
        stream_id = await create(http, base_url, body)
        try:
            await wait_status(http, base_url, stream_id, {"in_progress"}, 30)
            await _wait_processing(http, base_url, stream_id)
            crowd: list[tuple[float, float]] = []  # (wall clock, stream time) of each event
            subscribed = asyncio.Event()

            async def collect() -> None:
                async with websockets.connect(f"ws://{facade.address}/1/ws?stream_id={stream_id}") as ws:
                    async for data in ws:
                        subscribed.set()  # the first message: the current status (see watch())
                        event = json.loads(data)["analytics_results"].get("people_counter")
                        if event:
                            crowd.append((time.monotonic(), event["overview"]["time_offset"]))

            collector = asyncio.create_task(collect())
            try:
                async with asyncio.timeout(20):
                    await subscribed.wait()
                first, started = (await get(http, base_url, stream_id))["statistics"], time.monotonic()
                ages = []
                for _ in range(12):
                    await asyncio.sleep(0.5)
                    ages.append((await get(http, base_url, stream_id))["statistics"]["frame_age"])
                stream = await get(http, base_url, stream_id)
                window = time.monotonic() - started
            finally:
                collector.cancel()
            assert stream["status"] == "in_progress", stream["error"]
            stats = stream["statistics"]
            assert stats["last_error"] is None
            processed = stats["frames_processed"] - first["frames_processed"]
            decoded = stats["frames_decoded"] - first["frames_decoded"]
            dropped = stats["frames_dropped"] - first["frames_dropped"]
            assert processed > 0 and decoded > 0, (first, stats)
            per_frame = window / processed  # wall-clock seconds per analysed frame, this machine
            if processed < 0.8 * decoded:
                # The camera outran the analysis: the frames it had no time for were dropped
                # (and counted), not queued.
                assert dropped > 0, (first, stats)
            # The newest frame wins: the stream time of the analysed frames advances with the wall
            # clock (a queue would make it fall behind). Increments only: the clip loops.
            events = [(wall, offset) for wall, offset in crowd if wall >= started]
            assert len(events) >= 3, crowd
            advance = sum(max(0.0, b[1] - a[1]) for a, b in itertools.pairwise(events))
            span = events[-1][0] - events[0][0]
            assert advance >= 0.6 * span - 2 * per_frame, (advance, span, per_frame)
            # Decoded to analysed: its own analysis and the frames ahead of it (two buffered, two
            # in flight), a few frames' time on any machine; the second is for a loaded machine.
            assert max(ages) < 6 * per_frame + 1.0, (ages, per_frame)
        finally:
            await _delete(http, base_url, stream_id)
    finally:
        server.stop()


async def test_bad_input_leaves_other_streams_running(
    http: aiohttp.ClientSession, base_url: str, rtsp: RtspServer, live_clip: Path
) -> None:
    rtsp.start()
    stream_id = await create(http, base_url, live_stream(rtsp.url))
    try:
        await wait_status(http, base_url, stream_id, {"in_progress"}, 30)
        before = await _wait_processing(http, base_url, stream_id)
        bad_bodies = [
            {"data": {"reference": "ftp://127.0.0.1/a.mp4"}},
            {"data": {"reference": "/no/such/file.mp4"}},
            {"data": {"reference": str(live_clip)}, "analytics": [{"analytic_name": "nope"}]},
            {
                "data": {"reference": str(live_clip)},
                "analytics": [{"analytic_name": "people_counter", "parameters": {"probe_count": -1}}],
            },
        ]
        for body in bad_bodies:
            async with http.post(f"{base_url}/1/streams", json=body) as resp:
                assert resp.status == 400
        async with http.post(
            f"{base_url}/1/streams", data=b"{not json", headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400
        async with http.get(f"{base_url}/1/streams/not-a-uuid") as resp:
            assert resp.status == 400
        after = await _wait_processing(http, base_url, stream_id)
        assert after > before
        assert (await get(http, base_url, stream_id))["status"] == "in_progress"
    finally:
        await _delete(http, base_url, stream_id)


async def test_delete_while_still_connecting(http: aiohttp.ClientSession, base_url: str) -> None:
    with refused_port() as port:  # nothing listens there, and nothing can start to
        stream_id = await create(http, base_url, live_stream(f"rtsp://127.0.0.1:{port}/none"))
        try:
            await wait_status(http, base_url, stream_id, {"restart"}, 10)
            started = time.monotonic()
            async with http.delete(f"{base_url}/1/streams/{stream_id}") as resp:
                assert resp.status == 204
            # The bound is the point: no waiting out the open timeout (5 s) or a retry; the slack
            # is for a loaded machine.
            assert time.monotonic() - started < 4
        finally:
            await _delete(http, base_url, stream_id)
    async with http.get(f"{base_url}/1/streams/{stream_id}") as resp:
        assert resp.status == 404


async def test_websocket_server_pings(http: aiohttp.ClientSession, base_url: str, live_clip: Path) -> None:
    stream_id = await create(http, base_url, {"data": {"reference": str(live_clip)}, "status": "pause"})
    ws_url = base_url.replace("http://", "ws://") + f"/1/ws?stream_id={stream_id}"
    try:
        async with http.ws_connect(ws_url, autoping=False) as ws:
            first = await ws.receive(timeout=5)
            assert json.loads(first.data)["stream_status"] == "pause"
            ping = await ws.receive(timeout=5)  # the facade's heartbeat is 1 s in the tests
            assert ping.type == aiohttp.WSMsgType.PING
            await ws.pong(ping.data)
    finally:
        await _delete(http, base_url, stream_id)
