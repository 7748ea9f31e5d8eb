"""The stream lifecycle as docs/streams.md describes it, on the session's real stack.

Autorestart that runs out ends in ``failure``; ``unsupported_codec`` is never retried; a ``done``
file runs again from its start; a transition the table forbids is 409 with 47005.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from lva_testkit.clips import clip
from lva_testkit.documented import delete_stream
from lva_testkit.ports import free_port
from lva_testkit.streams import assert_luna_error, create, file_stream, get, statuses, wait_status


@pytest.fixture
async def streams(http: aiohttp.ClientSession, base_url: str) -> AsyncIterator[list[str]]:
    """Ids the test created; each is deleted whatever the test's outcome."""
    created: list[str] = []
    try:
        yield created
    finally:
        for stream_id in created:
            await delete_stream(http, base_url, stream_id)


async def _watch_after_resume(
    http: aiohttp.ClientSession, base_url: str, stream_id: str, final: set[str]
) -> list[dict[str, Any]]:
    """Subscribe, then resume the stream, then read until a status in ``final``: every message."""
    ws_url = f"{base_url.replace('http', 'ws', 1)}/1/ws?stream_id={stream_id}"
    messages: list[dict[str, Any]] = []
    async with http.ws_connect(ws_url, timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
        messages.append(json.loads((await ws.receive(timeout=30)).data))
        async with http.patch(f"{base_url}/1/streams/{stream_id}", json={"status": "pending"}) as resp:
            assert resp.status == 200, await resp.text()
        # The first message is the status before the resume (``done`` may be in ``final``).
        while len(messages) == 1 or messages[-1]["stream_status"] not in final:
            messages.append(json.loads((await ws.receive(timeout=60)).data))
    return messages


async def test_autorestart_that_runs_out_ends_in_failure(
    http: aiohttp.ClientSession, base_url: str, streams: list[str]
) -> None:
    # Nothing listens on the port: every attempt is refused.
    body = {
        "name": "nobody-home",
        "data": {"reference": f"rtsp://127.0.0.1:{free_port()}/cam", "type": "stream"},
        "autorestart": {"restart": 1, "attempt_count": 2, "delay": 0.05},
        "status": "pause",
    }
    stream_id = await create(http, base_url, body)
    streams.append(stream_id)
    messages = await _watch_after_resume(http, base_url, stream_id, {"failure"})
    # One restart message for the series of attempts with the same error, then failure.
    assert statuses(messages) == ["pause", "pending", "restart", "failure"]
    assert messages[-1]["error"].startswith("connection_refused: ")
    stream = await get(http, base_url, stream_id)
    assert stream["status"] == "failure"
    assert stream["error"] == messages[-1]["error"]
    assert stream["statistics"]["reconnects"] == 2  # the whole budget, and not one more


def _audio_only(path: Path) -> Path:
    """A real media file without a video stream: PyAV opens it, and no video decoder applies."""
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = (np.sin(np.linspace(0, 2 * np.pi * 440, 8000)) * 10000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


async def test_unsupported_codec_is_a_failure_without_any_retry(
    http: aiohttp.ClientSession, base_url: str, streams: list[str], tmp_path: Path
) -> None:
    source = _audio_only(tmp_path / "voice.wav")
    body = {
        "name": "no-video",
        "data": {"reference": str(source), "type": "videofile"},
        # A generous budget: if unsupported_codec were retried, the stream would sit in restart.
        "autorestart": {"restart": 1, "attempt_count": 10, "delay": 1},
        "status": "pause",
    }
    stream_id = await create(http, base_url, body)
    streams.append(stream_id)
    messages = await _watch_after_resume(http, base_url, stream_id, {"failure", "restart"})
    assert statuses(messages) == ["pause", "pending", "failure"]
    assert messages[-1]["error"].startswith("unsupported_codec: ")
    stream = await get(http, base_url, stream_id)
    assert stream["status"] == "failure"
    assert stream["statistics"]["reconnects"] == 0


async def test_a_done_file_runs_again_from_its_start_and_keeps_counting(
    http: aiohttp.ClientSession, base_url: str, streams: list[str], tmp_path: Path
) -> None:
    stream_id = await create(http, base_url, file_stream(clip(tmp_path, seconds=1.0), []))
    streams.append(stream_id)
    first = await wait_status(http, base_url, stream_id, {"done", "failure"}, 120)
    assert first["status"] == "done", first
    decoded = first["statistics"]["frames_decoded"]
    assert decoded == 25  # one second at 25 fps: the whole file
    messages = await _watch_after_resume(http, base_url, stream_id, {"done", "failure"})
    assert statuses(messages) == ["done", "pending", "in_progress", "done"]
    again = await get(http, base_url, stream_id)
    # Read again from its start: every frame a second time, counted on top of the first run.
    assert again["statistics"]["frames_decoded"] == 2 * decoded
    assert again["error"] is None


async def test_a_transition_the_table_forbids_is_409_with_47005(
    http: aiohttp.ClientSession, base_url: str, streams: list[str], tmp_path: Path
) -> None:
    stream_id = await create(http, base_url, file_stream(clip(tmp_path, seconds=1.0), []))
    streams.append(stream_id)
    await wait_status(http, base_url, stream_id, {"done"}, 120)
    async with http.patch(f"{base_url}/1/streams/{stream_id}", json={"status": "pause"}) as resp:
        assert resp.status == 409
        body = await resp.json()
    assert_luna_error(body, 47005)
    assert body["detail"] == "a stream in status done cannot go to pause"
    # Refused means unchanged.
    assert (await get(http, base_url, stream_id))["status"] == "done"
