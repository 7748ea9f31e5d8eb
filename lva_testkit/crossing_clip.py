"""A clip of a person crossing a line a known number of times each way, for ``line_crossing``.

The person is scikit-image's photograph of the cameraman (``camera()``, as in
:mod:`lva_testkit.clips`: a man standing, seen from the knees up), scaled so that he is about
385 px tall on a 1280x720 canvas. SSDLite finds him on every frame at that size (scores 0.8-1.0),
so the counts depend on the analytic, not on the detector. The astronaut photograph, a head and
shoulders portrait, is not found on a 16:9 canvas at any size below 700 px (the network squeezes
the frame to 300x300, and she scored under 0.1), so she is not the one who crosses. His tile
slides left and right over the clips' static gradient, along a script of waypoints
(:data:`SCRIPT`): he crosses the vertical line x = :data:`LINE_X` (drawn bottom to top, so "left
to right" is walking towards the picture's right edge, which counts as ``in``) as
:data:`CROSSINGS` says, lingers on it once without crossing, and jitters across it once before
going on.

The truth is exact because positions are pure functions of the frame index: beside the clip,
``<clip>.truth.json`` holds, per frame, his box (the person inside the tile, x, y, width, height,
clipped to the canvas) and the bottom centre of that box, and the crossings a perfect counter
reports with their frame numbers (a crossing of the line by the bottom centre, with the
lingering and the jitter not counted).
"""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from lva_testkit.clips import _background, _resized, truth_path

SIZE = (1280, 720)
FPS = 25
TILE = 440  # the cameraman's photograph, 512x512, at this side on the canvas
TILE_Y = 270  # the tile's top edge: its bottom edge is 10 px above the canvas's
# Where he is in the 512x512 photograph, x1, y1, x2, y2 (read off it by eye): his back at the
# left edge to the camera in his hands, the top of his hair to the bottom edge.
PERSON = (0, 65, 330, 512)
LINE_X = 640
# (seconds, x of his bottom centre): linear between waypoints. Left is x < LINE_X.
SCRIPT: list[tuple[float, float]] = [
    (0.0, 300.0),
    (1.0, 300.0),
    (3.0, 980.0),  # crosses left to right: in
    (4.0, 980.0),
    (6.0, 300.0),  # crosses right to left: out
    (7.0, 300.0),
    (8.0, 625.0),  # walks up to the line and lingers on it ...
    (8.4, 650.0),
    (8.8, 630.0),
    (9.2, 648.0),
    (9.6, 628.0),
    (10.0, 640.0),
    (11.0, 300.0),  # ... and walks back where he came from: no crossing
    (12.0, 300.0),
    (13.0, 615.0),  # comes to the line again and jitters across it ...
    (13.4, 665.0),
    (13.8, 615.0),
    (14.2, 665.0),
    (14.6, 615.0),
    (15.0, 662.0),
    (16.5, 980.0),  # ... then goes on to the right: one in
    (17.5, 980.0),
]
SECONDS = SCRIPT[-1][0]
CROSSINGS = {"in": 2, "out": 1}


def anchor_x(t: float) -> float:
    """His bottom centre's x at ``t`` seconds (the script, linear between its waypoints)."""
    for (t0, x0), (t1, x1) in itertools.pairwise(SCRIPT):
        if t0 <= t <= t1:
            return x0 + (x1 - x0) * (t - t0) / (t1 - t0)
    return SCRIPT[-1][1]


def _person_box(tile_x: int) -> tuple[int, int, int, int]:
    """His box on the canvas, x1, y1, x2, y2, for a tile whose left edge is at ``tile_x``."""
    scale = TILE / 512
    x1, y1, x2, y2 = (round(v * scale) for v in PERSON)
    return tile_x + x1, TILE_Y + y1, tile_x + x2, TILE_Y + y2


def _tile_x(t: float) -> int:
    scale = TILE / 512
    centre = (PERSON[0] + PERSON[2]) / 2 * scale
    return round(anchor_x(t) - centre)


def expected_crossings(fps: int = FPS, every: int = 1) -> list[dict[str, Any]]:
    """The crossings of the line by his bottom centre on frames 0, every, 2*every, ...

    What a counter sees when it is shown every ``every``-th frame: a crossing is a change of side
    between the sides held before and after a stay on the line, so lingering and jitter that
    end on the side they started from count nothing. Frames where the anchor is within 38 px
    of the line (his box is ~385 px tall: the analytic's default margin is a tenth of that) are
    on the line.
    """
    crossings: list[dict[str, Any]] = []
    side = 0
    count = round(SECONDS * fps)
    for index in range(0, count, every):
        x1, _, x2, _ = _person_box(_tile_x(index / fps))
        x = (x1 + x2) / 2
        now = -1 if x < LINE_X - 38 else 1 if x > LINE_X + 38 else 0
        if now == 0:
            continue
        if side and now != side:
            crossings.append({"frame_number": index, "direction": "in" if now > 0 else "out"})
        side = now
    return crossings


def make_crossing_clip(path: str | Path, fps: int = FPS, crf: int = 23) -> Path:
    """Write the clip (1280x720, H.264 in MP4, :data:`SECONDS` long) and its truth; return ``path``."""
    from skimage import data  # a dev dependency, as in lva_testkit.clips

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = SIZE
    tile = _resized(data.camera(), TILE)
    background = _background(width, height)
    count = round(SECONDS * fps)
    frames: list[dict[str, Any]] = []
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = fps
        # One thread: deterministic bytes (see lva_testkit.clips).
        stream.codec_context.thread_count = 1
        stream.options = {"preset": "veryfast", "crf": str(crf), "x264-params": "scenecut=0"}
        for index in range(count):
            tile_x = _tile_x(index / fps)
            canvas = background.copy()
            left, right = max(0, tile_x), min(width, tile_x + TILE)
            canvas[TILE_Y : TILE_Y + TILE, left:right] = tile[:, left - tile_x : right - tile_x]
            x1, y1, x2, y2 = _person_box(tile_x)
            x1, x2 = max(0, x1), min(width, x2)
            frames.append(
                {
                    "frame_number": index,
                    "time_offset": index / fps,
                    "person": [x1, y1, x2 - x1, y2 - y1],
                    "anchor": [(x1 + x2) / 2, y2],
                }
            )
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(canvas), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    truth = {
        "clip": path.name,
        "fps": fps,
        "size": [width, height],
        "frame_count": count,
        "line": {"from": {"x": LINE_X, "y": height}, "to": {"x": LINE_X, "y": 0}},
        "crossings": CROSSINGS,
        "box_format": "x, y, width, height in pixels; clipped to the frame",
        "frames": frames,
    }
    truth_path(path).write_text(json.dumps(truth, separators=(",", ":")))
    return path


def crossing_clip(directory: Path, name: str = "crossing.mp4") -> Path:
    """``directory/name``, built by :func:`make_crossing_clip` unless it is there already."""
    path = directory / name
    if not path.exists():
        make_crossing_clip(path)
    return path
