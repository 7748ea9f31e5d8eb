"""The analytics on the real models, in a real tritonserver, through the core's own client and batcher.

Nothing is faked: the repository is a temporary copy of person_detector, face_detector and
face_attributes (weights fetched into it by tools/fetch_models.py, from its cache), ``infer``
goes through ``TritonClient`` and ``ModelBatcher`` as the engine's does, and the frames are
scikit-image's photograph of the astronaut Eileen Collins: one person, one face. Where she is was
read off the photograph by eye (the same truths as tests/models/test_model_person.py
and tests/models/test_model_faces.py), never taken from a model's own output.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skimage import data

from lva_core.analytics.base import InferFn
from lva_core.analytics.human_tracking import HumanTracking
from lva_core.analytics.people_counter import PeopleCounter
from lva_core.inference.batcher import ModelBatcher
from lva_core.inference.client import TritonClient
from lva_core.pipeline.frame import Frame
from lva_testkit.triton import local_triton

MODELS = ("person_detector", "face_detector", "face_attributes")
STREAM = "0b0f3c1e-7d0a-4a8e-9d55-3a1e1c2b4f60"

# data.astronaut(), 512x512, pixels x1, y1, x2, y2: the whole person (hair to the bottom edge,
# shoulder to outstretched hand) and her face (hairline to chin, ear to ear).
ASTRONAUT_PERSON = (20, 15, 364, 512)
ASTRONAUT_FACE = (176, 56, 272, 180)
# Roles of each analytic -> the models of this repository that obey their contracts.
PEOPLE_COUNTER_MODELS = {"detector": "person_detector"}
HUMAN_TRACKING_MODELS = {"detector": "face_detector", "attributes": "face_attributes"}


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)


def corners(rect: Mapping[str, int], shift: tuple[int, int] = (0, 0)) -> tuple[float, ...]:
    """An event's rect as x1, y1, x2, y2, moved back by ``shift``."""
    x, y = rect["x"] - shift[0], rect["y"] - shift[1]
    return (x, y, x + rect["width"], y + rect["height"])


def astronaut_frame(
    number: int = 0, *, source_size: tuple[int, int] = (512, 512), offset: tuple[int, int] = (0, 0)
) -> Frame:
    """The photograph as a stream's frame; with ``offset``, as the stream-roi crop of a larger source."""
    return Frame(
        stream_id=STREAM,
        pixels=data.astronaut(),
        frame_number=number,
        time_offset=number * 0.2,
        decoded_at=0.0,
        source_size=source_size,
        offset=offset,
    )


@pytest.fixture(scope="module")
def model_repository(fetched_repository: Callable[..., Path]) -> Path:
    """A repository with only the three models the analytics use, weights in place."""
    return fetched_repository("analytics-models", MODELS, timeout=900)


@pytest.fixture(scope="module")
async def client(model_repository: Path) -> AsyncIterator[TritonClient]:
    server = local_triton(model_repository, startup_timeout=120)
    await server.start()
    triton = TritonClient(server.grpc_url, shared_memory=True, pool_bytes=64 << 20, timeout=30)
    await triton.start()
    try:
        yield triton
    finally:
        await triton.close()
        await server.stop()


@pytest.fixture(scope="module")
async def batchers(client: TritonClient) -> AsyncIterator[dict[str, ModelBatcher]]:
    made = {model: ModelBatcher(client, model, max_batch=8, max_delay=0.005, timeout=30) for model in MODELS}
    yield made
    for batcher in made.values():
        await batcher.close()


class Calls:
    """An ``infer`` over the batchers, as the engine builds it, counting the calls per role."""

    def __init__(self, batchers: Mapping[str, ModelBatcher], role_to_model: Mapping[str, str]) -> None:
        self.batchers = batchers
        self.role_to_model = role_to_model
        self.roles: list[str] = []

    async def __call__(
        self, role: str, inputs: Mapping[str, np.ndarray[Any, Any]]
    ) -> dict[str, np.ndarray[Any, Any]]:
        self.roles.append(role)
        return await self.batchers[self.role_to_model[role]].infer(inputs)


@pytest.fixture
def people_infer(batchers: dict[str, ModelBatcher]) -> Iterator[Calls]:
    yield Calls(batchers, PEOPLE_COUNTER_MODELS)


@pytest.fixture
def faces_infer(batchers: dict[str, ModelBatcher]) -> Iterator[Calls]:
    yield Calls(batchers, HUMAN_TRACKING_MODELS)


# Every analysed frame reports its count.
EVERY_FRAME = {
    "rate": {"period": 1, "unit": "frame"},
    "probe_count": 1,
    "people_count_threshold": 0,
    "event_policy": {"trigger": "period", "interval": 0.01},
}


async def count_people(frame: Frame, infer: InferFn, **parameters: Any) -> dict[str, Any]:
    counter = PeopleCounter()
    state = counter.start(STREAM, {**EVERY_FRAME, **parameters})
    (event,) = await counter.process(frame, state, infer)
    return event


async def test_people_counter_counts_the_astronaut_where_she_stands(people_infer: Calls) -> None:
    event = await count_people(astronaut_frame(), people_infer)
    assert event["people_count"] == 1
    (detection,) = event["detections"]
    assert iou(corners(detection["rect"]), ASTRONAUT_PERSON) > 0.7, detection
    assert 0.4 <= detection["score"] <= 1
    x1, y1, x2, y2 = corners(detection["rect"])
    (centre,) = event["overview"]["people_coordinates"]
    assert abs(centre[0] - (x1 + x2) / 2) <= 1 and abs(centre[1] - (y1 + y2) / 2) <= 1
    assert event["overview"]["frame_number"] == 0
    assert people_infer.roles == ["detector"]


async def test_people_counter_reports_source_frame_pixels_under_a_stream_roi(people_infer: Calls) -> None:
    # The photograph is the stream-roi crop at (300, 200) of a 1280x960 source frame.
    offset = (300, 200)
    frame = astronaut_frame(source_size=(1280, 960), offset=offset)
    event = await count_people(frame, people_infer)
    assert event["people_count"] == 1
    rect = event["detections"][0]["rect"]
    assert iou(corners(rect, offset), ASTRONAUT_PERSON) > 0.7, rect
    assert rect["x"] >= offset[0] and rect["y"] >= offset[1]

    # The analytic's own roi is in source pixels (or percent of the source) too: her box centre,
    # near (490, 465), is inside the first two and outside the third.
    inside = await count_people(frame, people_infer, roi={"x": 300, "y": 200, "width": 400, "height": 500})
    assert inside["people_count"] == 1
    right = {"x": 30, "y": 0, "width": 70, "height": 100, "mode": "percent"}  # source x >= 384
    assert (await count_people(frame, people_infer, roi=right))["people_count"] == 1
    far_right = {"x": 600, "y": 0, "width": 680, "height": 960}
    outside = await count_people(frame, people_infer, roi=far_right)
    assert outside["people_count"] == 0 and outside["detections"] == []


async def test_people_counter_counts_her_in_a_polygon_and_not_outside_or_excluded(
    people_infer: Calls,
) -> None:
    # Polygons decide by the bottom centre of her box (her feet would be there): about (192, 512)
    # in the photograph, at the bottom edge; (492, 712) in the 1280x960 source of which the
    # photograph is the stream-roi crop at (300, 200).
    offset = (300, 200)
    frame = astronaut_frame(source_size=(1280, 960), offset=offset)
    # A pentagon around her lower body, in source pixels, reaching below the crop's bottom edge.
    around = {"points": [[340, 500], [620, 480], [680, 760], [420, 760], [310, 640]]}
    event = await count_people(frame, people_infer, roi=[around])
    assert event["people_count"] == 1
    assert iou(corners(event["detections"][0]["rect"], offset), ASTRONAUT_PERSON) > 0.7, event
    # The same area as droi, in percent of the source frame.
    percent = {"points": [[x / 12.8, y / 9.6] for x, y in around["points"]], "mode": "percent"}
    assert (await count_people(frame, people_infer, droi=[percent]))["people_count"] == 1

    # A polygon elsewhere: the upper left of the photograph, over part of her but not her feet.
    elsewhere = {"points": [[300, 200], [500, 200], [500, 450], [300, 450]]}
    away = await count_people(frame, people_infer, roi=[elsewhere])
    assert away["people_count"] == 0 and away["detections"] == [], away
    assert away["overview"]["people_coordinates"] == []
    # ... unless her box centre decides: near (490, 465), outside it still; inside a taller one.
    taller = {"points": [[300, 200], [700, 200], [700, 520], [300, 520]]}
    assert (await count_people(frame, people_infer, roi=[taller]))["people_count"] == 0
    assert (await count_people(frame, people_infer, roi=[taller], anchor="center"))["people_count"] == 1

    # Excluded: a droi polygon over her with exclude, alone or beside a zone that holds her.
    over = {**around, "exclude": True}
    assert (await count_people(frame, people_infer, droi=[over]))["people_count"] == 0
    assert (await count_people(frame, people_infer, roi=[around], droi=[over]))["people_count"] == 0
    # An exclusion elsewhere leaves her counted.
    assert (await count_people(frame, people_infer, droi=[{**elsewhere, "exclude": True}]))[
        "people_count"
    ] == 1


async def test_human_tracking_starts_a_track_on_her_face_with_age_and_gender(faces_infer: Calls) -> None:
    tracking = HumanTracking()
    state = tracking.start(
        STREAM, {"min_hits": 1, "targets": ["ags"], "event_policy": {"update_interval": 1, "unit": "frame"}}
    )
    (start,) = await tracking.process(astronaut_frame(0), state, faces_infer)
    assert start["phase"] == "start" and start["event_type"] == "human_tracking"
    face = start["face_detection"]
    assert iou(corners(face["rect"]), ASTRONAUT_FACE) > 0.5, face
    assert face["score"] >= 0.6
    # The landmarks (eyes, nose, mouth corners) lie inside her face box.
    x1, y1, x2, y2 = ASTRONAUT_FACE
    assert len(face["landmarks"]) == 5
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face["landmarks"]), face["landmarks"]
    assert start["gender"] == "female" and start["gender_score"] > 0.5
    assert start["age"] is not None and 15 < start["age"] < 70
    assert faces_infer.roles == ["detector", "attributes"]  # one attributes call for the frame

    # The same face on the next frames continues the track; stop ends it.
    (update,) = await tracking.process(astronaut_frame(1), state, faces_infer)
    assert update["phase"] == "update" and update["track_id"] == start["track_id"]
    (end,) = tracking.stop(state)
    assert end["phase"] == "end" and end["track_id"] == start["track_id"] and end["gender"] == "female"


async def test_human_tracking_under_a_stream_roi_and_without_ags(faces_infer: Calls) -> None:
    offset = (640, 360)
    tracking = HumanTracking()
    state = tracking.start(STREAM, {"min_hits": 1})
    frame = astronaut_frame(source_size=(1920, 1080), offset=offset)
    (start,) = await tracking.process(frame, state, faces_infer)
    assert iou(corners(start["face_detection"]["rect"], offset), ASTRONAUT_FACE) > 0.5
    assert start["gender"] is None and start["age"] is None
    assert faces_infer.roles == ["detector"]


async def test_two_streams_at_once_share_the_models(
    faces_infer: Calls, batchers: dict[str, ModelBatcher]
) -> None:
    # Two streams' frames, processed concurrently as the engine does: the batchers may merge
    # them (the attributes request keeps the detector's K rows, so shapes match) and each
    # stream still gets its own answer.
    tracking = HumanTracking()
    parameters = {"min_hits": 1, "targets": ["ags"]}
    states = [tracking.start(STREAM, parameters), tracking.start(STREAM, parameters)]
    mirrored = Frame(STREAM, np.ascontiguousarray(data.astronaut()[:, ::-1]), 0, 0.0, 0.0, (512, 512))
    # The batchers are the module's: count what this test adds, not what earlier tests sent.
    stats = batchers["face_attributes"].stats
    items, batches = stats.items, stats.batches
    left, right = await asyncio.gather(
        tracking.process(astronaut_frame(), states[0], faces_infer),
        tracking.process(mirrored, states[1], faces_infer),
    )
    (a,), (b,) = left, right
    assert iou(corners(a["face_detection"]["rect"]), ASTRONAUT_FACE) > 0.5
    fx1, fy1, fx2, fy2 = ASTRONAUT_FACE
    assert iou(corners(b["face_detection"]["rect"]), (512 - fx2, fy1, 512 - fx1, fy2)) > 0.5
    assert a["gender"] == b["gender"] == "female"
    # One attributes call per frame (human_tracking's contract), both answered, in one batch or two.
    assert stats.items - items == 2
    assert stats.batches - batches in (1, 2)
