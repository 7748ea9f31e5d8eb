"""The clips of tests, benchmarks and the reliability suite: built here, cached where asked.

:func:`make_clip` builds the sample clip: real people from real photographs, moving, encoded as
H.264 in an MP4.

The photographs ship inside scikit-image (nothing is downloaded): ``astronaut()`` (Eileen Collins,
one person, one face), ``camera()`` (the cameraman, greyscale) and two face crops of Labeled Faces
in the Wild (``lfw_subset()``, 25x25 greyscale, upscaled). They slide across a 1280x720 canvas so
that trackers see motion; in the middle of the clip three people are visible at once, around it
two, at its ends one. Tiles never overlap, so every tile's box is exactly where its person is.

Beside ``<clip>`` it writes ``<clip>.truth.json``: for every frame, the box of each visible photo
tile (clipped to the canvas), the fraction of the tile that is visible, and the box of the
tile's face. Face boxes in the photographs were measured once with scikit-image's LBP frontal
face cascade and are fixed here; an LFW crop is a face from edge to edge.

Deterministic: positions are pure functions of the frame index and x264 runs on one thread
(its threaded modes gave different bytes from run to run on a loaded machine), so the same
arguments give the same bytes on the same PyAV build. A 10 s 720p clip takes ~3 s. That is
why a clip of given arguments that already exists is the clip they give: :func:`clip` and
:func:`cached_clip` build each one once. ``make sample`` builds ``var/sample.mp4`` through
``tools/make_sample_clip.py``, a command line over :func:`make_clip`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

# The layout is designed on this canvas and scaled to the requested size.
BASE_SIZE = (1280, 720)

Box = tuple[int, int, int, int]  # x, y, width, height


@dataclass(frozen=True)
class Tile:
    """One photograph on the canvas: where it is over time, as fractions of the clip."""

    name: str
    source: str  # where the photograph comes from, for the truth file
    pixels: np.ndarray[Any, Any]  # uint8 RGB [S, S, 3], already at its size on the canvas
    face: tuple[float, float, float, float]  # face box as fractions of the tile (x, y, w, h)
    start: float  # visible from this fraction of the clip ...
    end: float  # ... up to (not including) this one
    # (x, y) of the tile's top-left corner at progress p in [0, 1) of its visible window,
    # in BASE_SIZE pixels (before scaling); may lie partly outside the canvas.
    path: Callable[[float], tuple[float, float]]


def _rgb(image: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if image.dtype != np.uint8:  # lfw_subset is float64 in [0, 1]
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image


def _resized(image: np.ndarray[Any, Any], side: int) -> np.ndarray[Any, Any]:
    return np.asarray(Image.fromarray(_rgb(image)).resize((side, side), Image.Resampling.BICUBIC))


def _tiles(scale: float) -> list[Tile]:
    from skimage import data  # a dev dependency; imported late so --help works without it

    def side(base: int) -> int:
        return max(16, round(base * scale))

    lfw = data.lfw_subset()  # the first 100 crops are faces, the last 100 are not
    # Faces measured with skimage.feature.Cascade(data.lbp_frontal_face_cascade_filename()) on
    # the 512x512 photographs: astronaut x 177-284, y 62-170; cameraman x 207-263, y 124-180.
    return [
        Tile(
            "astronaut",
            "skimage.data.astronaut",
            _resized(data.astronaut(), side(360)),
            (177 / 512, 62 / 512, 107 / 512, 108 / 512),
            0.0,
            1.0,
            # Drifts right and back along the left half, bobbing a little.
            lambda p: (60 + 200 * (1 - abs(2 * p - 1)), 180 + 40 * math.sin(2 * math.pi * p)),
        ),
        Tile(
            "cameraman",
            "skimage.data.camera",
            _resized(data.camera(), side(360)),
            (207 / 512, 124 / 512, 56 / 512, 56 / 512),
            0.3,
            0.9,
            # Slides in from the right edge, drifts left, slides out to the right again.
            lambda p: (
                (1280 - 420 * min(1.0, p / 0.2) + 420 * max(0.0, (p - 0.8) / 0.2))
                - 40 * math.sin(math.pi * p),
                300,
            ),
        ),
        Tile(
            "lfw_face_0",
            "skimage.data.lfw_subset[0]",
            _resized(lfw[0], side(180)),
            (0.0, 0.0, 1.0, 1.0),
            0.4,
            0.8,
            # Pans down the middle column.
            lambda p: (635, 40 + 460 * p),
        ),
        Tile(
            "lfw_face_1",
            "skimage.data.lfw_subset[1]",
            _resized(lfw[1], side(140)),
            (0.0, 0.0, 1.0, 1.0),
            0.05,
            0.3,
            # A short appearance early on: moves along the top of the right half.
            lambda p: (860 + 260 * p, 40),
        ),
    ]


def _background(width: int, height: int) -> np.ndarray[Any, Any]:
    # A smooth, static gradient: cheap to encode, and a tile's edges stand out against it.
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    red = 40 + 30 * xs + 0 * ys
    green = 50 + 40 * ys + 0 * xs
    blue = 70 + 50 * (1 - ys) * (0.5 + 0.5 * xs)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def _clip_box(x: int, y: int, w: int, h: int, width: int, height: int) -> Box | None:
    x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def place_tile(
    canvas: np.ndarray[Any, Any], tile: Tile, t: float, scale: tuple[float, float]
) -> tuple[int, int, Box] | None:
    """Paste ``tile`` where it is at fraction ``t`` of the clip (BASE_SIZE positions scaled by
    ``scale``), clipped to ``canvas``: its unclipped corner (x, y) and its visible box, or None
    when it is not visible then. The one placement of every clip built from these tiles."""
    if not tile.start <= t < tile.end:
        return None
    height, width = canvas.shape[:2]
    bx, by = tile.path((t - tile.start) / (tile.end - tile.start))
    side = tile.pixels.shape[0]
    x, y = round(bx * scale[0]), round(by * scale[1])
    box = _clip_box(x, y, side, side, width, height)
    if box is None:
        return None
    cx, cy, cw, ch = box
    canvas[cy : cy + ch, cx : cx + cw] = tile.pixels[cy - y : cy - y + ch, cx - x : cx - x + cw]
    return x, y, box


def make_clip(
    path: str | Path,
    seconds: float = 10.0,
    fps: int = 25,
    size: tuple[int, int] = (1280, 720),
    keyint: int | None = None,
    crf: int = 23,
) -> Path:
    """Write the clip to ``path`` and its ground truth to ``<path>.truth.json``; return ``path``.

    ``keyint`` is the fixed keyframe interval in frames (default: one keyframe per second). Scene
    cut detection is off, so keyframes fall exactly on multiples of ``keyint``. B-frames stay on
    (x264's default of 3), as in most real encoders, so decode order differs from display order.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    if width % 2 or height % 2:
        raise ValueError("yuv420p needs an even width and height")
    keyint = keyint or fps
    sx, sy = width / BASE_SIZE[0], height / BASE_SIZE[1]
    tiles = _tiles(min(sx, sy))
    background = _background(width, height)
    count = max(1, round(seconds * fps))
    truth_frames: list[dict[str, Any]] = []

    # faststart: the index goes before the media data, so the clip plays over plain HTTP
    # (progressively, without range requests) as well as from disk.
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = keyint
        # One thread: with PyAV's default (x264 sliced threads plus lookahead threads) the output
        # changed from run to run on a loaded machine (measured), and it must not.
        stream.codec_context.thread_count = 1
        stream.options = {
            "preset": "veryfast",
            "crf": str(crf),
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0",
        }
        for index in range(count):
            canvas = background.copy()
            objects: list[dict[str, Any]] = []
            t = index / count
            for tile in tiles:
                placed = place_tile(canvas, tile, t, (sx, sy))
                if placed is None:
                    continue
                x, y, box = placed
                _, _, cw, ch = box
                side = tile.pixels.shape[0]
                fx, fy, fw, fh = tile.face
                face = _clip_box(
                    x + round(fx * side),
                    y + round(fy * side),
                    round(fw * side),
                    round(fh * side),
                    width,
                    height,
                )
                objects.append(
                    {
                        "name": tile.name,
                        "box": list(box),
                        "visible": round(cw * ch / (side * side), 4),
                        "face": list(face) if face else None,
                    }
                )
            truth_frames.append({"frame_number": index, "time_offset": index / fps, "objects": objects})
            frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))

    truth = {
        "clip": path.name,
        "fps": fps,
        "size": [width, height],
        "frame_count": count,
        "keyint": keyint,
        "box_format": "x, y, width, height in pixels; clipped to the frame",
        "tiles": [{"name": t.name, "source": t.source, "people": 1, "faces": 1} for t in tiles],
        "frames": truth_frames,
    }
    truth_path(path).write_text(json.dumps(truth, separators=(",", ":")))
    return path


def truth_path(clip: str | Path) -> Path:
    """Where :func:`make_clip` writes the ground truth of ``clip``."""
    clip = Path(clip)
    return clip.with_name(clip.name + ".truth.json")


def truth(clip: str | Path) -> dict[str, Any]:
    """The ground truth of ``clip``: every frame's visible tiles and faces (see the module)."""
    return dict(json.loads(truth_path(clip).read_text()))


def clip(
    directory: Path,
    name: str = "clip.mp4",
    seconds: float = 4.0,
    size: tuple[int, int] = (640, 360),
    fps: int = 25,
) -> Path:
    """``directory/name``, built by :func:`make_clip` unless it is there already."""
    path = directory / name
    if not path.exists():
        make_clip(path, seconds=seconds, fps=fps, size=size)
    return path


def cached_clip(directory: Path, seconds: float, fps: int = 25, size: tuple[int, int] = (1280, 720)) -> Path:
    """A clip of this length, rate and size in ``directory``, named after them, built once and kept.

    It is written under a temporary name and renamed when complete (its truth file first), so an
    interrupted build never leaves a clip that later runs would take for a whole one.
    """
    path = directory / f"clip-{size[0]}x{size[1]}-{fps}fps-{seconds:g}s.mp4"
    if not path.exists():
        partial = path.with_name(path.stem + ".partial.mp4")
        make_clip(partial, seconds=seconds, fps=fps, size=size)
        truth_path(partial).replace(truth_path(path))
        partial.replace(path)
    return path
