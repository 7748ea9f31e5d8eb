"""Event images end to end: real Triton, core and facade, the sample clip, a real WebSocket.

A file stream of the sample clip, cropped by the stream's roi, runs people_counter (an event on
every analysed frame, with the overview target) and human_tracking (with best_shot), both with
a short ``image_retain_policy.ttl``. Read live from /1/ws:

- every crowd event carries ``overview.image``, a URL that the facade serves: Pillow decodes a
  JPEG of the analysed picture (the roi crop) scaled to ``max_size``, with the pixels of the
  frame the event names;
- ``?account_id=`` of another account is 404, the owner's account or none is served;
- once the ttl has passed the URL is 404 with a LUNA body;
- face tracks' start and end events carry a ``best_shot`` URL of a JPEG face crop.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
import websockets
from PIL import Image

from lva_testkit.clips import clip
from lva_testkit.stack import Service
from lva_testkit.streams import FINAL, assert_luna_error, create, delete, file_stream, patch

ACCOUNT = "3a4b5c6d-7e8f-4a0b-9c1d-2e3f4a5b6c7d"
OTHER_ACCOUNT = "9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f"
TTL = 8.0
MAX_SIZE = 200
# The stream's roi: the analysed picture is this 400x300 crop of the 640x360 clip, scaled to
# 200x150 by max_size.
ROI = {"x": 100, "y": 20, "width": 400, "height": 300, "mode": "abs"}
SCALED = (200, 150)
POLICY = {"mimetype": "image/jpeg", "quality": 0.8, "max_size": MAX_SIZE, "ttl": TTL}
ANALYTICS: list[dict[str, Any]] = [
    {
        "analytic_name": "people_counter",
        "parameters": {
            "probe_count": 1,
            "people_count_threshold": 0,
            "rate": {"period": 1, "unit": "frame"},
            "event_policy": {"trigger": "period", "interval": 0.01},
            "targets": ["coordinates", "overview"],
            "image_retain_policy": POLICY,
        },
    },
    {
        "analytic_name": "human_tracking",
        "parameters": {"targets": ["best_shot"], "min_hits": 1, "image_retain_policy": POLICY},
    },
]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip(tmp_path_factory.mktemp("image-clips"))


def source_frame(path: Path, number: int) -> np.ndarray[Any, Any]:
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == number:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError(f"{path} has no frame {number}")


def expected_picture(path: Path, number: int) -> np.ndarray[Any, Any]:
    """The frame's roi crop, scaled as the image store scales it."""
    pixels = source_frame(path, number)
    crop = pixels[ROI["y"] : ROI["y"] + ROI["height"], ROI["x"] : ROI["x"] + ROI["width"]]
    scaled = Image.fromarray(np.ascontiguousarray(crop)).resize(
        SCALED, Image.Resampling.BILINEAR, reducing_gap=1.0
    )
    return np.asarray(scaled).astype(np.int16)


async def fetch(http: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, str, bytes]:
    async with http.get(url, params=params) as resp:
        return resp.status, resp.content_type, await resp.read()


async def test_event_images(
    http: aiohttp.ClientSession, base_url: str, facade: Service, sample: Path
) -> None:
    body = file_stream(sample, ANALYTICS, status="pause", account_id=ACCOUNT)
    body["data"]["roi"] = ROI
    stream_id = await create(http, base_url, body)
    crowd: list[dict[str, Any]] = []
    tracks: list[dict[str, Any]] = []
    first: tuple[float, str, int] | None = None  # when it came, its URL, its frame
    try:
        uri = f"ws://{facade.address}/1/ws?stream_id={stream_id}"
        async with asyncio.timeout(120), websockets.connect(uri) as websocket:
            await websocket.recv()  # the current status: subscribed
            await patch(http, base_url, stream_id, "pending")
            async for data in websocket:
                message = json.loads(data)
                results = message["analytics_results"]
                if "people_counter" in results:
                    event = results["people_counter"]
                    crowd.append(event)
                    if first is None:
                        # Checked at once: the image expires TTL seconds after it was stored.
                        first = (
                            time.monotonic(),
                            event["overview"]["image"],
                            event["overview"]["frame_number"],
                        )
                        status, media, image = await fetch(http, f"{base_url}{first[1]}")
                        assert status == 200 and media == "image/jpeg", (status, image[:300])
                        own = await fetch(http, f"{base_url}{first[1]}", account_id=ACCOUNT)
                        other = await fetch(http, f"{base_url}{first[1]}", account_id=OTHER_ACCOUNT)
                        assert first[0] + TTL - time.monotonic() > 1, (
                            "the checks took too long to mean anything"
                        )
                if "human_tracking" in results:
                    tracks.append(results["human_tracking"])
                if message["stream_status"] in FINAL:
                    break
    finally:
        await delete(http, base_url, stream_id)

    assert first is not None and len(crowd) >= 3, crowd
    received, url, frame_number = first
    # Every event carries an image of its own: none was dropped or failed.
    urls = [event["overview"]["image"] for event in crowd]
    assert all(isinstance(u, str) and u.startswith("/1/images/") for u in urls), urls
    assert len(set(urls)) == len(urls)

    # A decodable JPEG of the analysed picture (the stream's roi crop), scaled to max_size, of
    # the frame the event names.
    decoded = Image.open(io.BytesIO(image))
    assert decoded.format == "JPEG" and decoded.size == SCALED
    pixels = np.asarray(decoded.convert("RGB")).astype(np.int16)
    error = float(np.abs(pixels - expected_picture(sample, frame_number)).mean())
    elsewhere = float(np.abs(pixels - expected_picture(sample, (frame_number + 50) % 100)).mean())
    assert error < 6 and error < elsewhere / 2, (error, elsewhere)

    # The owner's account, or no account, is served; another account's is not found.
    assert own[:2] == (200, "image/jpeg") and own[2] == image
    assert other[0] == 404 and other[1] == "application/json"
    assert_luna_error(json.loads(other[2]), 47004)

    # Face tracks: a best shot on start and end.
    shots = [t["best_shot"] for t in tracks if t["phase"] in ("start", "end")]
    assert shots and all(isinstance(s, str) and s.startswith("/1/images/") for s in shots), tracks
    assert all(t["best_shot"] is None for t in tracks if t["phase"] == "update")
    status, media, data = await fetch(http, f"{base_url}{shots[0]}")
    if time.monotonic() < received + TTL - 0.5:  # the shots came after the first crowd image
        assert (status, media) == (200, "image/jpeg"), data[:300]
        face = Image.open(io.BytesIO(data))
        assert face.format == "JPEG" and 0 < max(face.size) <= MAX_SIZE

    # Past its ttl: not found, with a LUNA body.
    await asyncio.sleep(max(0.0, received + TTL + 1.0 - time.monotonic()))
    status, media, data = await fetch(http, f"{base_url}{url}")
    assert (status, media) == (404, "application/json"), data[:300]
    assert_luna_error(json.loads(data), 47004)
