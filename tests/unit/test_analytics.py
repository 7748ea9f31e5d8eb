"""Unit tests of the analytics: parameter schemas, people_counter, the tracker, human_tracking.

The models are replaced by a fake ``infer`` that answers in the detector and face_attributes
contracts with outputs built here (K padded rows, COUNT valid ones): these tests pin the
analytics' own logic. tests/models/test_analytics_models.py runs the same analytics on the real models.

Why one file of over 400 lines: the fake model outputs and frame builders are shared by the
tests of every analytic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from lva_common.errors import BAD_JSON, LunaError
from lva_core.analytics.detections import roi_bounds
from lva_core.analytics.human_tracking import HumanTracking
from lva_core.analytics.people_counter import PeopleCounter
from lva_core.analytics.tracker import Tracker, greedy_match, iou_matrix
from lva_core.analytics.validation import check_schema, fill_defaults, validate
from lva_core.images.policy import ImagePolicy
from lva_core.images.request import ImageRequest
from lva_core.pipeline.frame import Frame

K = 8  # rows of the fake detector's outputs
STREAM = "6d1b0f5e-8c1a-4a53-9a49-0b7d6c3c2f10"

Box = tuple[float, float, float, float]


def frame(
    number: int,
    *,
    time_offset: float | None = None,
    size: tuple[int, int] = (400, 300),
    source_size: tuple[int, int] | None = None,
    offset: tuple[int, int] = (0, 0),
) -> Frame:
    width, height = size
    return Frame(
        stream_id=STREAM,
        pixels=np.zeros((height, width, 3), np.uint8),
        frame_number=number,
        time_offset=float(number) if time_offset is None else time_offset,
        decoded_at=0.0,
        source_size=source_size or size,
        offset=offset,
    )


def detector_outputs(
    faces: Sequence[tuple[Box, float]], landmarks: bool = False
) -> dict[str, np.ndarray[Any, Any]]:
    """The detector contract for one frame: K rows, sorted by score, zero after COUNT."""
    ordered = sorted(faces, key=lambda face: -face[1])
    out: dict[str, np.ndarray[Any, Any]] = {
        "BOXES": np.zeros((K, 4), np.float32),
        "SCORES": np.zeros(K, np.float32),
        "CLASSES": np.zeros(K, np.int32),
        "COUNT": np.array([len(ordered)], np.int32),
    }
    for row, (box, score) in enumerate(ordered):
        out["BOXES"][row] = box
        out["SCORES"][row] = score
    if landmarks:
        # Five points: the four corners of the box and its centre, easy to check after mapping.
        out["LANDMARKS"] = np.zeros((K, 10), np.float32)
        for row, ((x1, y1, x2, y2), _) in enumerate(ordered):
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            out["LANDMARKS"][row] = [x1, y1, x2, y1, cx, cy, x1, y2, x2, y2]
    return out


class FakeInfer:
    """``infer`` answering from a script: detections per frame call, attributes from the boxes."""

    def __init__(self, script: Sequence[Sequence[tuple[Box, float]]], landmarks: bool = False) -> None:
        self.script = list(script)
        self.landmarks = landmarks
        self.calls: list[tuple[str, dict[str, np.ndarray[Any, Any]]]] = []

    async def __call__(self, role: str, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
        self.calls.append((role, dict(inputs)))
        if role == "detector":
            return detector_outputs(self.script.pop(0), self.landmarks)
        assert role == "attributes"
        boxes = inputs["BOXES"]
        # Age = 100 * the box's x1 (a value the test can predict per face); P(male) = 0.9 for
        # faces in the left half of the frame, 0.2 for the right half. Zero rows read 0.
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        age = np.where(valid, boxes[:, 0] * 100, 0).astype(np.float32)
        male = np.where(valid, np.where(boxes[:, 0] < 0.5, 0.9, 0.2), 0).astype(np.float32)
        return {"AGE": age, "GENDER": male}

    def roles(self) -> list[str]:
        return [role for role, _ in self.calls]


def error_of(analytic: PeopleCounter | HumanTracking, parameters: Any, prefix: str) -> LunaError:
    with pytest.raises(LunaError) as info:
        analytic.validate(parameters, prefix)
    assert info.value.spec is BAD_JSON and info.value.code == 12027
    return info.value


# ------------------------------------------------------------------ parameter validation


@pytest.mark.parametrize("analytic", [PeopleCounter(), HumanTracking()], ids=lambda a: a.name)
def test_schemas_are_valid_draft_2020_12_with_valid_defaults(analytic: PeopleCounter | HumanTracking) -> None:
    schema = analytic.parameters_schema()
    check_schema(schema)
    assert schema["additionalProperties"] is False
    # Every parameter is documented for GET /1/analytics.
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{name} has no description"


def test_people_counter_defaults_are_filled() -> None:
    assert PeopleCounter().validate({}, "analytics[0].parameters") == {
        "roi": None,
        "droi": None,
        "anchor": "bottom_center",
        "rate": {"period": 1, "unit": "second"},
        "probe_count": 2,
        "people_count_threshold": 1,
        "event_policy": {"trigger": "start", "interval": 1},
        "targets": ["coordinates", "overview"],
        "score_threshold": 0,
        "image_retain_policy": {"mimetype": "image/jpeg", "quality": 0.9, "max_size": 1280, "ttl": 3600},
    }


def test_nested_defaults_fill_partial_objects_and_are_not_shared() -> None:
    counter = PeopleCounter()
    first = counter.validate(
        {"rate": {"unit": "frame"}, "roi": {"x": 1, "y": 2, "width": 3, "height": 4}}, "p"
    )
    assert first["rate"] == {"period": 1, "unit": "frame"}
    assert first["roi"]["mode"] == "abs"
    first["targets"].append("mutated")
    assert counter.validate({}, "p")["targets"] == ["coordinates", "overview"]


def test_human_tracking_defaults_are_filled() -> None:
    assert HumanTracking().validate({}, "analytics[1].parameters") == {
        "roi": None,
        "score_threshold": 0,
        "start_score_threshold": 0.6,
        "iou_threshold": 0.3,
        "min_hits": 2,
        "max_age": 5,
        "event_policy": {"phases": ["start", "update", "end"], "update_interval": 1, "unit": "second"},
        "detectors": ["face"],
        "targets": [],
        "image_retain_policy": {"mimetype": "image/jpeg", "quality": 0.9, "max_size": 1280, "ttl": 3600},
    }


@pytest.mark.parametrize(
    "parameters, path, words",
    [
        ({"probe_count": "3"}, "analytics[0].parameters.probe_count", "is not of type 'integer'"),
        ({"probe_count": 0}, "analytics[0].parameters.probe_count", "less than the minimum of 1"),
        ({"probe_count": 2.5}, "analytics[0].parameters.probe_count", "is not of type 'integer'"),
        ({"probe_count": True}, "analytics[0].parameters.probe_count", "is not of type 'integer'"),
        ({"people_count_threshold": -1}, "analytics[0].parameters.people_count_threshold", "minimum"),
        ({"crowd_size": 3}, "analytics[0].parameters.crowd_size", "unknown parameter"),
        ({"rate": {"period": 1, "every": 2}}, "analytics[0].parameters.rate.every", "unknown parameter"),
        ({"rate": {"period": 0}}, "analytics[0].parameters.rate.period", "less than or equal to"),
        ({"rate": {"period": 1.5, "unit": "frame"}}, "analytics[0].parameters.rate.period", "integer"),
        ({"rate": {"unit": "minute"}}, "analytics[0].parameters.rate.unit", "is not one of"),
        (
            {"event_policy": {"trigger": "sometimes"}},
            "analytics[0].parameters.event_policy.trigger",
            "one of",
        ),
        ({"event_policy": {"interval": 0}}, "analytics[0].parameters.event_policy.interval", "less than"),
        ({"targets": ["coordinates", "faces"]}, "analytics[0].parameters.targets[1]", "is not one of"),
        ({"targets": "overview"}, "analytics[0].parameters.targets", "is not of type 'array'"),
        ({"score_threshold": 1.5}, "analytics[0].parameters.score_threshold", "maximum of 1"),
        ({"roi": {"x": 0, "y": 0, "height": 10}}, "analytics[0].parameters.roi.width", "required"),
        ({"roi": {"x": 0, "y": 0, "width": -5, "height": 10}}, "analytics[0].parameters.roi.width", "less"),
        (
            {"roi": {"x": 0, "y": 0, "width": 5, "height": 10, "mode": "px"}},
            "analytics[0].parameters.roi.mode",
            "",
        ),
        (
            {"roi": {"x": 0, "y": 0, "width": 5, "height": 10, "z": 1}},
            "analytics[0].parameters.roi.z",
            "unknown",
        ),
        ({"roi": "everywhere"}, "analytics[0].parameters.roi", "is not of type"),
        (
            {"roi": {"x": 60, "y": 0, "width": 50, "height": 10, "mode": "percent"}},
            "analytics[0].parameters.roi.width",
            "exceeds 100 percent",
        ),
        (
            {"roi": {"x": 0, "y": 0, "width": 50, "height": 120, "mode": "percent"}},
            "analytics[0].parameters.roi.height",
            "maximum of 100",
        ),
        ([1, 2], "analytics[0].parameters", "is not of type 'object'"),
    ],
)
def test_people_counter_errors_name_the_bad_field(parameters: Any, path: str, words: str) -> None:
    error = error_of(PeopleCounter(), parameters, "analytics[0].parameters")
    assert error.detail.startswith(f"{path}: "), error.detail
    assert words in error.detail
    assert error.extra == {"path": path}


@pytest.mark.parametrize(
    "parameters, path",
    [
        ({"min_hits": 0}, "analytics[1].parameters.min_hits"),
        ({"max_age": "5"}, "analytics[1].parameters.max_age"),
        ({"iou_threshold": 0}, "analytics[1].parameters.iou_threshold"),
        ({"targets": ["ags", "emotions"]}, "analytics[1].parameters.targets[1]"),
        ({"targets": ["ags", "ags"]}, "analytics[1].parameters.targets"),
        ({"event_policy": {"phases": ["begin"]}}, "analytics[1].parameters.event_policy.phases[0]"),
        ({"event_policy": {"update_interval": -1}}, "analytics[1].parameters.event_policy.update_interval"),
        ({"tracker": {}}, "analytics[1].parameters.tracker"),
        ({"roi": {"x": 0, "y": 0, "width": 10}}, "analytics[1].parameters.roi.height"),
    ],
)
def test_human_tracking_errors_name_the_bad_field(parameters: Any, path: str) -> None:
    error = error_of(HumanTracking(), parameters, "analytics[1].parameters")
    assert error.detail.startswith(f"{path}: "), error.detail
    assert error.extra == {"path": path}


def test_numbers_from_protobuf_struct_are_accepted() -> None:
    # google.protobuf.Struct carries every number as a double: 3 arrives as 3.0.
    parameters = {"probe_count": 3.0, "people_count_threshold": 2.0, "rate": {"period": 5.0, "unit": "frame"}}
    assert PeopleCounter().validate(parameters, "p")["probe_count"] == 3.0
    state = PeopleCounter().start(STREAM, parameters)
    assert state.settings.probe_count == 3 and isinstance(state.settings.probe_count, int)


def test_validate_and_fill_defaults_helpers() -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "items": {"type": "array", "items": {"type": "object", "properties": {"n": {"default": 1}}}}
        },
    }
    assert fill_defaults(schema, {"items": [{}, {"n": 5}]}) == {"items": [{"n": 1}, {"n": 5}]}
    assert validate(schema, None, "p") == {}  # no parameters at all: every default
    with pytest.raises(LunaError) as info:
        validate(schema, {"items": [{}, 3]}, "")
    assert info.value.detail.startswith("items[1]: ")


def test_roi_rect_in_pixels_and_percent() -> None:
    assert roi_bounds(None, (640, 480)) == (0, 0, 640, 480)
    assert roi_bounds({"x": 10, "y": 20, "width": 100, "height": 50, "mode": "abs"}, (640, 480)) == (
        10,
        20,
        110,
        70,
    )
    percent = {"x": 25, "y": 50, "width": 50, "height": 50, "mode": "percent"}
    assert roi_bounds(percent, (640, 480)) == (160, 240, 480, 480)
    # An absolute roi larger than the source is clipped to it.
    assert roi_bounds({"x": 600, "y": 0, "width": 100, "height": 1000, "mode": "abs"}, (640, 480)) == (
        600,
        0,
        640,
        480,
    )


# ------------------------------------------------------------------ people_counter


def counter_state(**parameters: Any) -> Any:
    base: dict[str, Any] = {"rate": {"period": 1, "unit": "frame"}, "probe_count": 1}
    return PeopleCounter().start(STREAM, {**base, **parameters})


def person(
    cx: float, cy: float = 0.5, score: float = 0.9, w: float = 0.1, h: float = 0.4
) -> tuple[Box, float]:
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), score


async def test_people_counter_maps_boxes_to_source_pixels_with_the_stream_roi_offset() -> None:
    # The stream's roi crops a 200x100 image at (50, 20) out of a 400x300 source frame.
    infer = FakeInfer([[((0.25, 0.5, 0.75, 1.0), 0.87654)]])
    state = counter_state()
    crop = frame(7, time_offset=0.28, size=(200, 100), source_size=(400, 300), offset=(50, 20))
    events = await PeopleCounter().process(crop, state, infer)
    assert len(events) == 1
    event = events[0]
    assert event["event_type"] == "crowd" and event["stream_id"] == STREAM
    assert event["people_count"] == 1
    assert event["detections"] == [{"rect": {"x": 100, "y": 70, "width": 100, "height": 50}, "score": 0.8765}]
    image = event["overview"].pop("image")
    assert event["overview"] == {"people_coordinates": [[150, 95]], "time_offset": 0.28, "frame_number": 7}
    # The analysed picture itself (the stream's roi crop), by reference, with the default policy.
    assert isinstance(image, ImageRequest) and image.pixels is crop.pixels
    assert image.policy == ImagePolicy()
    assert event["event_create_time"].endswith("+00:00")
    assert len(event["event_id"]) == 36
    assert infer.roles() == ["detector"]
    assert infer.calls[0][1]["IMAGE"] is crop.pixels


async def test_people_counter_counts_only_box_centres_inside_the_roi() -> None:
    faces = [person(0.2), person(0.45), person(0.8)]  # centres at x = 80, 180, 320 of 400
    left_half = {"x": 0, "y": 0, "width": 50, "height": 100, "mode": "percent"}
    events = await PeopleCounter().process(frame(0), counter_state(roi=left_half), FakeInfer([faces]))
    assert events[0]["people_count"] == 2
    assert [c[0] for c in events[0]["overview"]["people_coordinates"]] == [80, 180]

    # In absolute pixels of the source, with a stream roi offset: the image is the source's
    # right half (offset 200), so normalised x 0.5 is source x 300.
    right = {"x": 250, "y": 0, "width": 100, "height": 300}
    half = frame(0, size=(200, 300), source_size=(400, 300), offset=(200, 0))
    events = await PeopleCounter().process(half, counter_state(roi=right), FakeInfer([faces]))
    assert events[0]["people_count"] == 1
    assert events[0]["overview"]["people_coordinates"][0][0] == 290  # 0.45 * 200 + 200


async def test_people_counter_ignores_rows_past_count_and_below_score_threshold() -> None:
    outputs = detector_outputs([person(0.2, score=0.9), person(0.5, score=0.45)])
    outputs["BOXES"][2] = (0.7, 0.1, 0.9, 0.9)  # garbage after COUNT: not a detection
    outputs["SCORES"][2] = 0.99

    async def infer(role: str, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        return outputs

    assert (await PeopleCounter().process(frame(0), counter_state(), infer))[0]["people_count"] == 2
    state = counter_state(score_threshold=0.5)
    assert (await PeopleCounter().process(frame(0), state, infer))[0]["people_count"] == 1


async def run_counts(state: Any, counts: Sequence[int], step: float = 1.0) -> list[tuple[int, int]]:
    """Feed frames with ``counts`` people; (frame number, people_count) of every event."""
    infer = FakeInfer([[person(0.05 + 0.1 * i) for i in range(n)] for n in counts])
    found = []
    for number in range(len(counts)):
        for event in await PeopleCounter().process(frame(number, time_offset=number * step), state, infer):
            found.append((event["overview"]["frame_number"], event["people_count"]))
    return found


async def test_start_trigger_needs_probe_count_agreeing_frames() -> None:
    state = counter_state(people_count_threshold=2, probe_count=3, event_policy={"trigger": "start"})
    # A single frame at 2 (frame 1) and two frames (3, 4) are flicker; 6, 7, 8 is a crowd. The
    # dip at 9 does not end it; three frames below (11, 12, 13) do, and 15-17 start a new one.
    counts = [0, 2, 0, 2, 3, 1, 2, 3, 2, 1, 2, 0, 1, 1, 0, 4, 4, 4]
    assert await run_counts(state, counts) == [(8, 2), (17, 4)]


async def test_end_trigger_reports_the_count_that_ended_the_crowd() -> None:
    state = counter_state(people_count_threshold=2, probe_count=2, event_policy={"trigger": "end"})
    counts = [3, 3, 3, 1, 3, 1, 0, 0, 2]
    assert await run_counts(state, counts) == [(6, 0)]


async def test_period_trigger_reports_at_start_then_every_interval_while_crowded() -> None:
    state = counter_state(
        people_count_threshold=1, probe_count=1, event_policy={"trigger": "period", "interval": 1.0}
    )
    # Frames every 0.25 s: events at 0.0, 1.0, 2.0 (while crowded), none while empty, and a
    # new crowd reports at once (3.0 is empty, 3.25 starts it again).
    counts = [1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 0, 3, 3, 3, 3, 3]
    found = await run_counts(state, counts, step=0.25)
    assert found == [(0, 1), (4, 2), (8, 1), (13, 3), (17, 3)]


async def test_threshold_zero_with_period_reports_every_count() -> None:
    state = counter_state(people_count_threshold=0, event_policy={"trigger": "period", "interval": 2})
    assert await run_counts(state, [0, 0, 1, 0, 5]) == [(0, 0), (2, 1), (4, 5)]


async def test_rate_throttles_what_reaches_the_detector() -> None:
    counter = PeopleCounter()
    policy = {"trigger": "period", "interval": 0.1}  # an event for every analysed frame
    state = counter.start(
        STREAM, {"rate": {"period": 1, "unit": "second"}, "probe_count": 1, "event_policy": policy}
    )
    infer = FakeInfer([[person(0.5)]] * 10)
    analysed = []
    for number in range(10):  # 0.0, 0.4, 0.8, 1.2, ... 3.6 seconds
        if await counter.process(frame(number, time_offset=number * 0.4), state, infer):
            analysed.append(number)
    # On a 1 s grid: 0.0, 1.2, 2.0, 3.2 s (not 0, 1.2, 2.4, 3.6: the rate does not drift).
    assert len(infer.calls) == 4 and analysed == [0, 3, 5, 8]

    state = counter.start(STREAM, {"rate": {"period": 10, "unit": "frame"}, "probe_count": 1})
    infer = FakeInfer([[]] * 10)
    for number in (0, 5, 10, 15, 19, 20, 30, 3):  # 3: the source started over
        await counter.process(frame(number), state, infer)
    assert len(infer.calls) == 5  # 0, 10, 20, 30, 3


async def test_targets_choose_what_the_event_carries() -> None:
    crowd = [person(0.3), person(0.6)]
    events = await PeopleCounter().process(frame(3), counter_state(targets=[]), FakeInfer([crowd]))
    assert set(events[0]) == {"event_type", "event_id", "stream_id", "event_create_time", "people_count"}
    assert events[0]["people_count"] == 2

    events = await PeopleCounter().process(frame(3), counter_state(targets=["overview"]), FakeInfer([crowd]))
    assert isinstance(events[0]["overview"].pop("image"), ImageRequest)
    assert events[0]["overview"] == {"time_offset": 3.0, "frame_number": 3} and "detections" not in events[0]

    events = await PeopleCounter().process(
        frame(3), counter_state(targets=["coordinates"]), FakeInfer([crowd])
    )
    assert events[0]["overview"] == {"people_coordinates": [[120, 150], [240, 150]]}
    assert len(events[0]["detections"]) == 2


def test_people_counter_stop_flushes_nothing() -> None:
    assert PeopleCounter().stop(counter_state()) == []


# ------------------------------------------------------------------ tracker


def square(cx: float, cy: float, side: float = 40) -> list[float]:
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def test_iou_matrix_and_greedy_match() -> None:
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    b = np.array([[20, 20, 30, 30], [5, 0, 15, 10], [100, 100, 100, 100]])
    iou = iou_matrix(a, b)
    np.testing.assert_allclose(iou, np.array([[0, 50 / 150, 0], [1, 0, 0]]))
    assert greedy_match(iou, 0.3) == [(1, 0), (0, 1)]
    assert greedy_match(iou, 0.5) == [(1, 0)]
    assert greedy_match(np.zeros((0, 3)), 0.3) == []


def test_two_objects_crossing_keep_their_ids() -> None:
    tracker = Tracker(iou_threshold=0.2, min_hits=1, max_age=2)
    ids: dict[str, list[int]] = {"a": [], "b": []}
    for step in range(11):
        # a goes right, b goes left, 15 px apart vertically; they overlap around step 5.
        a, b = square(100 + 20 * step, 100), square(300 - 20 * step, 115)
        # The detector's order is by score, which says nothing about identity: alternate it.
        boxes, owners = ([a, b], "ab") if step % 2 else ([b, a], "ba")
        update = tracker.update(np.array(boxes), np.array([0.9, 0.9]))
        by_detection = {t.detection: t.track_id for t in tracker.tracks}
        for index, owner in enumerate(owners):
            ids[owner].append(by_detection[index])
        if step == 0:
            assert len(update.started) == 2
        else:
            assert not update.started and not update.ended and len(update.updated) == 2
    assert len(set(ids["a"])) == 1 and len(set(ids["b"])) == 1 and ids["a"][0] != ids["b"][0]


def test_a_missed_frame_within_max_age_keeps_the_id_and_max_age_ends_it() -> None:
    tracker = Tracker(min_hits=2, max_age=2)
    face = np.array([square(100, 100)])
    assert tracker.update(face, [0.9]).started == []  # tentative
    (track,) = tracker.update(face, [0.9]).started  # confirmed on the second hit
    first_id = track.track_id
    assert tracker.update(np.zeros((0, 4)), []).ended == []  # missed once
    update = tracker.update(face, [0.9])
    assert [t.track_id for t in update.updated] == [first_id] and not update.started
    assert tracker.update(np.zeros((0, 4)), []).ended == []  # miss 1
    assert tracker.update(np.zeros((0, 4)), []).ended == []  # miss 2 = max_age: still alive
    (ended,) = tracker.update(np.zeros((0, 4)), []).ended  # miss 3: ended
    assert ended.track_id == first_id and tracker.tracks == []


def test_tentative_tracks_vanish_on_a_miss_and_ids_are_never_reused() -> None:
    tracker = Tracker(min_hits=3, max_age=0)
    face = np.array([square(100, 100)])
    seen = []
    for _ in range(2):
        tracker.update(face, [0.9])
        seen.append(tracker.tracks[0].track_id)
        assert tracker.update(np.zeros((0, 4)), []).ended == []  # tentative: dropped silently
        assert tracker.tracks == []
    for _ in range(3):
        update = tracker.update(face, [0.9])
    (track,) = update.started
    seen.append(track.track_id)
    (ended,) = tracker.update(np.zeros((0, 4)), []).ended  # max_age 0: the first miss ends it
    tracker.update(face, [0.9])
    seen.append(tracker.tracks[0].track_id)
    assert ended.track_id == track.track_id
    assert len(set(seen)) == 4  # a face at the very same place later is a new track


def test_low_score_detections_continue_tracks_but_never_start_them() -> None:
    tracker = Tracker(min_hits=1, max_age=0, high_score=0.6)
    assert tracker.update(np.array([square(100, 100)]), [0.4]).started == []
    assert tracker.tracks == []
    (track,) = tracker.update(np.array([square(100, 100)]), [0.8]).started
    # A weak detection that overlaps well keeps the track (max_age 0: a miss would end it).
    update = tracker.update(np.array([square(104, 100)]), [0.3])
    assert [t.track_id for t in update.updated] == [track.track_id] and not update.ended
    # One that overlaps too little for the stricter second stage does not.
    assert [t.track_id for t in tracker.update(np.array([square(130, 100)]), [0.3]).ended] == [track.track_id]


def test_tracker_close_ends_only_confirmed_tracks() -> None:
    tracker = Tracker(min_hits=2)
    tracker.update(np.array([square(100, 100), square(300, 100)]), [0.9, 0.9])
    tracker.update(np.array([square(100, 100)]), [0.9])
    tracker.update(np.array([square(100, 100), square(300, 300)]), [0.9, 0.9])
    assert len(tracker.close()) == 1 and tracker.tracks == []


# ------------------------------------------------------------------ human_tracking


def face(x1: float, score: float = 0.9, y1: float = 0.2, side: float = 0.1) -> tuple[Box, float]:
    return (x1, y1, x1 + side, y1 + side * 4 / 3), score


def tracking_state(**parameters: Any) -> Any:
    base: dict[str, Any] = {
        "min_hits": 1,
        "max_age": 1,
        "event_policy": {"update_interval": 2, "unit": "frame"},
    }
    return HumanTracking().start(STREAM, {**base, **parameters})


async def run_tracking(
    state: Any, script: Sequence[Sequence[tuple[Box, float]]], **frame_args: Any
) -> tuple[list[dict[str, Any]], FakeInfer]:
    infer = FakeInfer(script, landmarks=True)
    analytic = HumanTracking()
    events = []
    for number in range(len(script)):
        events.extend(await analytic.process(frame(number, **frame_args), state, infer))
    return events, infer


async def test_track_phases_start_update_end() -> None:
    state = tracking_state()
    script = [[face(0.1)]] * 5 + [[]] * 2 + [[face(0.6)]] * 2
    events, infer = await run_tracking(state, script)
    phases = [(e["phase"], e["frame_number"]) for e in events]
    # Updates every 2 frames; lost at 5, ended at 6 (max_age 1) with its last sighting (frame 4);
    # the face at 0.6 is a new track, still open at the end of the script.
    assert phases == [("start", 0), ("update", 2), ("update", 4), ("end", 4), ("start", 7)]
    first = {e["track_id"] for e in events[:4]}
    assert len(first) == 1 and events[4]["track_id"] not in first
    assert infer.roles() == ["detector"] * len(script)  # no ags target: no attributes calls
    start = events[0]
    assert start["event_type"] == "human_tracking" and start["stream_id"] == STREAM
    assert start["face_detection"]["rect"] == {"x": 40, "y": 60, "width": 40, "height": 40}
    assert start["face_detection"]["score"] == pytest.approx(0.9)
    assert start["face_detection"]["landmarks"] == [[40, 60], [80, 60], [60, 80], [40, 100], [80, 100]]
    assert start["age"] is None and start["gender"] is None and start["gender_score"] is None

    (end,) = HumanTracking().stop(state)
    assert end["phase"] == "end" and end["track_id"] == events[4]["track_id"] and end["frame_number"] == 8
    assert HumanTracking().stop(state) == []


async def test_ags_calls_attributes_once_per_frame_with_all_faces() -> None:
    state = tracking_state(targets=["ags"])
    # Two faces on each frame (left: "male", right: "female", by the fake), plus a weak
    # detection below start_score_threshold that starts no track and is not estimated.
    script = [[face(0.1), face(0.7), face(0.4, score=0.3)]] * 3
    events, infer = await run_tracking(state, script)
    assert infer.roles() == ["detector", "attributes"] * 3
    for _, inputs in infer.calls[1::2]:
        boxes = inputs["BOXES"]
        assert boxes.shape == (K, 4) and boxes.dtype == np.float32  # the detector's K rows
        nonzero = boxes[(boxes != 0).any(axis=1)]
        np.testing.assert_allclose(sorted(nonzero[:, 0]), [0.1, 0.7], rtol=1e-6)
        assert inputs["IMAGE"].size == (400, 300)
    starts = sorted(
        (e for e in events if e["phase"] == "start"), key=lambda e: e["face_detection"]["rect"]["x"]
    )
    assert [(e["gender"], e["gender_score"], e["age"]) for e in starts] == [
        ("male", 0.9, 10.0),
        ("female", 0.8, 70.0),
    ]


async def test_ags_values_are_means_over_the_track() -> None:
    state = tracking_state(targets=["attributes"], event_policy={"phases": ["end"]})
    # The same track drifts right: x1 = 0.3, 0.4, 0.5 -> ages 30, 40, 50; P(male) 0.9, 0.9, 0.2.
    script = [[face(0.3, side=0.3)], [face(0.4, side=0.3)], [face(0.5, side=0.3)]]
    events, _ = await run_tracking(state, script)
    assert events == []
    (end,) = HumanTracking().stop(state)
    assert end["age"] == pytest.approx(40.0)
    assert end["gender"] == "male" and end["gender_score"] == pytest.approx(2.0 / 3.0, abs=1e-4)


async def test_tracking_roi_and_source_offset() -> None:
    # Only the right half of the source is tracked; the image is a crop at (100, 50).
    roi = {"x": 50, "y": 0, "width": 50, "height": 100, "mode": "percent"}
    state = tracking_state(roi=roi, targets=["ags"])
    events, infer = await run_tracking(
        state, [[face(0.1), face(0.8)]], size=(400, 300), source_size=(600, 400), offset=(100, 50)
    )
    (start,) = events
    assert start["face_detection"]["rect"] == {"x": 420, "y": 110, "width": 40, "height": 40}
    boxes = infer.calls[1][1]["BOXES"]
    assert (boxes != 0).any(axis=1).sum() == 1  # the face outside the roi is not estimated


async def test_no_faces_no_attributes_call_and_phases_can_be_disabled() -> None:
    state = tracking_state(targets=["ags"], event_policy={"phases": ["start"]})
    events, infer = await run_tracking(state, [[], [face(0.2)], [face(0.2)], [], [], []])
    assert (
        infer.roles() == ["detector", "detector", "attributes", "detector", "attributes"] + ["detector"] * 3
    )
    assert [e["phase"] for e in events] == ["start"]
    assert HumanTracking().stop(state) == []


# ------------------------------------------------------------------ event images


def painted(number: int, size: tuple[int, int] = (400, 300)) -> Frame:
    """A frame whose every pixel is number + 1: a crop tells which frame it was cut from."""
    width, height = size
    base = frame(number, size=size)
    return Frame(
        stream_id=STREAM,
        pixels=np.full((height, width, 3), number + 1, np.uint8),
        frame_number=number,
        time_offset=base.time_offset,
        decoded_at=0.0,
        source_size=size,
    )


async def test_people_counter_overview_image_is_the_analysed_frame_with_the_policy() -> None:
    policy = {"mimetype": "image/png", "quality": 0.5, "max_size": 320, "ttl": 2}
    state = counter_state(image_retain_policy=policy)
    analysed = painted(4)
    (event,) = await PeopleCounter().process(analysed, state, FakeInfer([[person(0.5)]]))
    request = event["overview"]["image"]
    assert isinstance(request, ImageRequest)
    assert request.pixels is analysed.pixels  # a reference, no copy
    assert request.policy == ImagePolicy("image/png", 0.5, 320, 2.0)
    # Without the overview target there is no image.
    state = counter_state(targets=["coordinates"])
    (event,) = await PeopleCounter().process(painted(4), state, FakeInfer([[person(0.5)]]))
    assert "image" not in event["overview"]


@pytest.mark.parametrize(
    ("analytic", "parameters"),
    [
        (PeopleCounter(), {"image_retain_policy": {"mimetype": "image/gif"}}),
        (PeopleCounter(), {"image_retain_policy": {"quality": 2}}),
        (HumanTracking(), {"image_retain_policy": {"ttl": 0}}),
        (HumanTracking(), {"image_retain_policy": {"max_size": 0}}),
        (HumanTracking(), {"image_retain_policy": {"size": 10}}),
    ],
)
def test_image_retain_policy_is_validated(analytic: PeopleCounter | HumanTracking, parameters: Any) -> None:
    error = error_of(analytic, parameters, "analytics[0].parameters")
    assert error.extra["path"].startswith("analytics[0].parameters.image_retain_policy.")


async def test_best_shot_is_the_crop_of_the_best_scoring_face_so_far() -> None:
    state = tracking_state(
        targets=["best_shot"],
        image_retain_policy={"max_size": 64},
        event_policy={"update_interval": 1, "unit": "frame"},
    )
    analytic = HumanTracking()
    # One face, scores 0.7, 0.95, 0.8, then lost: the end event's shot is frame 1's.
    script = [[face(0.1, score=0.7)], [face(0.1, score=0.95)], [face(0.1, score=0.8)], [], []]
    infer = FakeInfer(script)
    events = []
    shots = []
    for number in range(len(script)):
        events.extend(await analytic.process(painted(number), state, infer))
        shots.extend(info.best_shot for info in state.tracks.values())
    assert [e["phase"] for e in events] == ["start", "update", "update", "end"]
    start, update1, update2, end = events
    assert isinstance(start["best_shot"], ImageRequest) and isinstance(end["best_shot"], ImageRequest)
    assert update1["best_shot"] is None and update2["best_shot"] is None
    assert start["best_shot"].policy == ImagePolicy(max_size=64)
    # The box (0.1, 0.2)-(0.2, 0.333) of 400x300 is 40x40 pixels; a margin of 20 % each side.
    assert start["best_shot"].pixels.shape == (56, 56, 3)
    assert (start["best_shot"].pixels == 1).all()  # cut from frame 0, and never overwritten
    assert (end["best_shot"].pixels == 2).all()  # frame 1 scored best
    # Copied only when the score improved: frame 2's weaker face kept frame 1's array.
    assert shots[1] is shots[2] and shots[0] is not shots[1]
    assert not np.shares_memory(shots[1], painted(1).image)


async def test_best_shot_at_the_edge_is_clipped_and_stop_carries_it() -> None:
    state = tracking_state(targets=["best_shot", "ags"], event_policy={"phases": ["end"]})
    analytic = HumanTracking()
    infer = FakeInfer([[face(0.0, y1=0.0)]])
    assert await analytic.process(painted(0), state, infer) == []
    (end,) = analytic.stop(state)
    shot = end["best_shot"]
    assert isinstance(shot, ImageRequest)
    # 40x40 at the top-left corner: the margin exists only to the right and below.
    assert shot.pixels.shape == (48, 48, 3) and shot.pixels.flags.c_contiguous


async def test_no_best_shot_target_no_best_shot() -> None:
    state = tracking_state()
    events, _ = await run_tracking(state, [[face(0.1)]])
    assert "best_shot" not in events[0]
    assert all(info.best_shot is None for info in state.tracks.values())
