"""Helpers of the end-to-end stream tests: create streams over REST, read the WebSocket."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import websockets

from tools.make_sample_clip import make_clip, truth_path

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


def clip(
    directory: Path, name: str = "clip.mp4", seconds: float = 4.0, size: tuple[int, int] = (640, 360)
) -> Path:
    path = directory / name
    if not path.exists():
        make_clip(path, seconds=seconds, fps=25, size=size)
    return path


def truth(path: Path) -> dict[str, Any]:
    return dict(json.loads(truth_path(path).read_text()))


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


async def read_ws(uri: str, until: set[str] | None = None, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Read messages as the seed's sample client does, until a status in ``until`` (or close)."""
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout), websockets.connect(uri) as websocket:
        while True:
            try:
                data = await websocket.recv()
            except websockets.ConnectionClosed:
                return messages
            message = json.loads(data)
            messages.append(message)
            if until and message["stream_status"] in until:
                return messages


def statuses(messages: list[dict[str, Any]]) -> list[str]:
    """The status sequence, consecutive repeats collapsed."""
    sequence: list[str] = []
    for message in messages:
        if not sequence or sequence[-1] != message["stream_status"]:
            sequence.append(message["stream_status"])
    return sequence


def iou(a: list[float] | tuple[float, ...], b: list[float] | tuple[float, ...]) -> float:
    """IoU of two x, y, width, height boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def inside(a: list[float] | tuple[float, ...], b: list[float] | tuple[float, ...]) -> float:
    """The share of box ``a`` (x, y, width, height) that lies inside box ``b``."""
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3]) if a[2] * a[3] > 0 else 0.0
