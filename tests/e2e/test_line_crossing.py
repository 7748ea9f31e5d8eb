"""line_crossing and human_tracking's body tracks end to end: real Triton, core and facade, a clip
built from a real photograph with known crossings, events read over the WebSocket.

The clip (lva_testkit/crossing_clip.py): the cameraman, about 385 px tall, crosses the vertical
line x = 640 left to right twice and right to left once, lingers on it once and jitters across
it once (both within the margin) before going on. The stream samples every 5th frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lva_testkit.boxes import iou
from lva_testkit.clips import truth
from lva_testkit.crossing_clip import CROSSINGS, crossing_clip, expected_crossings
from lva_testkit.stack import Service
from lva_testkit.streams import FINAL, create, delete, file_stream, patch, statuses, watch

EVERY = 5  # the stream's sampling, file_stream's default


@pytest.fixture(scope="module")
def crossing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return crossing_clip(tmp_path_factory.mktemp("crossing"))


def results(messages: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [m["analytics_results"][name] for m in messages if name in m["analytics_results"]]


async def test_line_crossing_counts_the_clip_s_crossings_exactly(
    http: aiohttp.ClientSession, base_url: str, facade: Service, crossing: Path
) -> None:
    line = truth(crossing)["line"]
    analytics = [
        {
            "analytic_name": "line_crossing",
            "parameters": {"lines": [{"name": "door", **line}], "targets": []},
        },
        {
            "analytic_name": "human_tracking",
            "parameters": {"detectors": ["body"], "event_policy": {"phases": ["start", "end"]}},
        },
    ]
    stream_id = await create(http, base_url, file_stream(crossing, analytics, status="pause"))
    try:
        reader = await watch(f"ws://{facade.address}/1/ws?stream_id={stream_id}", until=FINAL, timeout=120)
        await patch(http, base_url, stream_id, "pending")
        messages = await reader
    finally:
        await delete(http, base_url, stream_id)
    assert statuses(messages)[-1] == "done", statuses(messages)
    frames = truth(crossing)["frames"]

    events = results(messages, "line_crossing")
    summary = [(e["direction"], e["in"], e["out"]) for e in events]
    assert summary == [("in", 1, 0), ("out", 1, 1), ("in", 2, 1)], events
    assert {"in": events[-1]["in"], "out": events[-1]["out"]} == CROSSINGS
    assert len({e["track_id"] for e in events}) == 1  # one person, one track all along
    # Each is reported within two analysed frames of when his feet crossed (min_frames 2).
    for event, expected in zip(events, expected_crossings(every=EVERY), strict=True):
        assert event["line"] == "door" and event["stream_id"] == stream_id
        assert 0 <= event["frame_number"] - expected["frame_number"] <= 2 * EVERY, (event, expected)
        rect = event["body_detection"]["rect"]
        box = [rect["x"], rect["y"], rect["width"], rect["height"]]
        assert iou(box, frames[event["frame_number"]]["person"]) > 0.6, (box, frames[event["frame_number"]])

    tracks = results(messages, "human_tracking")
    starts = [t for t in tracks if t["phase"] == "start"]
    assert len(starts) == 1, starts  # one body track, from start to end of the file
    assert [t["phase"] for t in tracks] == ["start", "end"]
    for event in tracks:
        assert event["face_detection"] is None and event["age"] is None
        rect = event["body_detection"]["rect"]
        box = [rect["x"], rect["y"], rect["width"], rect["height"]]
        assert iou(box, frames[event["frame_number"]]["person"]) > 0.6, (box, event)
