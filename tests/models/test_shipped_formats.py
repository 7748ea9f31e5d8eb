"""The shipped detectors in the frame formats they declare do no worse than on full-size RGB.

person_detector takes RGB scaled to 300x300 by the core and face_detector RGB fitted in
640x480 (their config.pbtxt). Each frame of the sample clip (real photographs moving over a
1280x720 canvas, with the truth of where every person and face is) and each real photograph is
sent twice through the core's batcher to a real Triton: as the full-size RGB array (what the
models got before) and as the frame's ``Pixels`` (what they get now). Against the truth, the
declared format must find at least as many people and faces, with no more false detections.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skimage import data

from lva_core.inference.batcher import ModelBatcher
from lva_core.inference.client import TritonClient
from lva_core.pipeline.frame import Frame
from lva_core.pipeline.pixels import Pixels
from lva_core.pipeline.source.reader import VideoSource
from lva_core.pipeline.source.spec import SourceSpec
from lva_core.runtime.triton_server import LocalTriton
from lva_testkit.clips import cached_clip, truth
from lva_testkit.triton import local_triton
from tests.models.test_model_person import ASTRONAUT_TRUTH, CAMERAMAN_TRUTH, iou, mirrored, rgb, tile

PERSON, FACE = "person_detector", "face_detector"
# A tile counts as a person to find when most of it is on the canvas.
VISIBLE = 0.5


@pytest.fixture(scope="module")
async def client(fetched_repository: Callable[..., Path]) -> AsyncIterator[TritonClient]:
    repo = fetched_repository("formats", [PERSON, FACE])
    server: LocalTriton = local_triton(repo, model_control_mode="none", startup_timeout=120)
    await server.start()
    client = TritonClient(server.grpc_url, shared_memory=True, pool_bytes=256 << 20, timeout=60)
    await client.start()
    try:
        yield client
    finally:
        await client.close()
        await server.stop()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_clip(tmp_path_factory.mktemp("sample"), 10.0)


def _frames(clip: Path) -> list[Frame]:
    with VideoSource(SourceSpec(reference=str(clip), kind="videofile", rate_period=10), "s") as source:
        return list(source.frames())


async def _detect(client: TritonClient, model: str, images: list[Any]) -> list[np.ndarray]:
    """The valid boxes (x1, y1, x2, y2 normalised) of each image, one request each."""
    batcher = ModelBatcher(client, model, max_batch=1)
    try:
        found = []
        for image in images:
            out = await batcher.infer({"IMAGE": image}, timeout=60)
            found.append(out["BOXES"][: int(out["COUNT"][0])])
        return found
    finally:
        await batcher.close()


def _pixel_box(box: list[int], size: tuple[int, int]) -> tuple[float, ...]:
    x, y, w, h = box
    width, height = size
    return (x / width, y / height, (x + w) / width, (y + h) / height)


def _inside(box: np.ndarray, truth_box: tuple[float, ...]) -> float:
    """Fraction of ``box`` inside ``truth_box``."""
    x1, y1 = max(box[0], truth_box[0]), max(box[1], truth_box[1])
    x2, y2 = min(box[2], truth_box[2]), min(box[3], truth_box[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return float(inter / max(1e-9, (box[2] - box[0]) * (box[3] - box[1])))


def _score(
    found: list[np.ndarray], truths: list[list[tuple[float, ...]]], match: Callable[..., bool]
) -> dict[str, int]:
    """Truths found (each by a different detection) and detections that match no truth."""
    hits = false = 0
    for boxes, expected in zip(found, truths, strict=True):
        used: set[int] = set()
        for truth_box in expected:
            best = next((i for i, b in enumerate(boxes) if i not in used and match(b, truth_box)), None)
            if best is not None:
                used.add(best)
                hits += 1
        false += sum(
            1 for i, b in enumerate(boxes) if i not in used and not any(match(b, t) for t in expected)
        )
    return {"found": hits, "false": false, "truths": sum(len(t) for t in truths)}


async def _compare(
    client: TritonClient, model: str, frames: list[Frame], truths: list[Any], match: Callable[..., bool]
) -> tuple[dict[str, int], dict[str, int]]:
    full = _score(
        await _detect(client, model, [np.ascontiguousarray(f.image) for f in frames]), truths, match
    )
    declared = _score(await _detect(client, model, [f.pixels for f in frames]), truths, match)
    print(model, "full RGB", full, "declared", declared)
    return full, declared


def _person(box: np.ndarray, truth_box: tuple[float, ...]) -> bool:
    return _inside(box, truth_box) > 0.8 and iou(box, truth_box) > 0.3


def _face(box: np.ndarray, truth_box: tuple[float, ...]) -> bool:
    return iou(box, truth_box) > 0.3 or _inside(box, truth_box) > 0.8


async def test_people_on_the_sample_clip(client: TritonClient, sample: Path) -> None:
    frames, expected = _frames(sample), truth(sample)["frames"]
    size = (1280, 720)
    truths = [
        [
            _pixel_box(o["box"], size)
            for o in expected[f.frame_number]["objects"]
            if o["visible"] >= VISIBLE and o["name"] in ("astronaut", "cameraman")
        ]
        for f in frames
    ]
    full, declared = await _compare(client, PERSON, frames, truths, _person)
    # SSDLite misses most of these 360-pixel people at 720p (issue of its own: a stronger
    # detector); measured here: 2 of 38 on full-size RGB, 8 of 38 on the core's 300x300, whose
    # area filter averages where the graph's own resize skips pixels.
    assert declared["found"] >= 2  # the comparison means something
    assert declared["found"] >= full["found"] and declared["false"] <= full["false"], (full, declared)


async def test_faces_on_the_sample_clip(client: TritonClient, sample: Path) -> None:
    frames, expected = _frames(sample), truth(sample)["frames"]
    size = (1280, 720)
    truths = [
        [
            _pixel_box(o["face"], size)
            for o in expected[f.frame_number]["objects"]
            if o["face"] and o["visible"] >= 1.0
        ]
        for f in frames
    ]
    full, declared = await _compare(client, FACE, frames, truths, _face)
    assert full["found"] > 0.5 * full["truths"]
    assert declared["found"] >= full["found"] and declared["false"] <= full["false"], (full, declared)


async def test_people_on_the_photographs(client: TritonClient) -> None:
    astronaut, cameraman = data.astronaut(), rgb(data.camera())
    top = np.concatenate([astronaut, cameraman], axis=1)
    bottom = np.concatenate([cameraman[:, ::-1], astronaut[:, ::-1]], axis=1)
    collage = np.ascontiguousarray(np.concatenate([top, bottom]))
    photos = [astronaut, cameraman, collage]
    truths = [
        [ASTRONAUT_TRUTH],
        [CAMERAMAN_TRUTH],
        [
            tile(ASTRONAUT_TRUTH, 0, 0, 2, 2),
            tile(CAMERAMAN_TRUTH, 1, 0, 2, 2),
            tile(mirrored(CAMERAMAN_TRUTH), 0, 1, 2, 2),
            tile(mirrored(ASTRONAUT_TRUTH), 1, 1, 2, 2),
        ],
    ]
    full = await _detect(client, PERSON, photos)
    declared = await _detect(client, PERSON, [Pixels.of_rgb(p) for p in photos])
    for got_full, got_declared, expected in zip(full, declared, truths, strict=True):
        assert len(got_declared) == len(got_full) == len(expected)
        for truth_box in expected:
            best_full = max(iou(b, truth_box) for b in got_full)
            best_declared = max(iou(b, truth_box) for b in got_declared)
            print(truth_box, round(best_full, 3), round(best_declared, 3))
            assert best_declared > 0.6 and best_declared >= best_full - 0.05
