"""Unit tests of line_crossing (the crossing logic on scripted tracks, its parameters, the analytic
with a fake person detector) and of human_tracking's body tracks.

The crossing clip through the real core and Triton is tests/e2e/test_line_crossing.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from lva_common.errors import BAD_JSON, LunaError
from lva_core.analytics.human_tracking import HumanTracking
from lva_core.analytics.line_crossing import LEFT, ON, RIGHT, Line, LineCounter, LineCrossing
from lva_core.analytics.validation import check_schema
from lva_core.images.request import ImageRequest
from lva_core.pipeline.frame import Frame

STREAM = "3c2b1a09-8f7e-4d6c-9b5a-493827161504"
K = 8
Box = tuple[float, float, float, float]

# A vertical line at x = 100 drawn bottom to top: its left is x < 100, and left_to_right (in) is
# walking towards the picture's right edge.
UP = Line("door", (100.0, 200.0), (100.0, 0.0))


def walk(counter: LineCounter, xs: Sequence[float], track: int = 1, y: float = 100.0) -> list[str]:
    """The crossings that a track at these x positions (one per frame) reports."""
    found = [counter.observe(track, (x, y), margin=5.0) for x in xs]
    return [direction for direction in found if direction is not None]


# ------------------------------------------------------------------ the crossing logic


def test_sides_of_a_line_as_seen_walking_from_its_start_to_its_end() -> None:
    assert UP.side((50, 100), 5) == LEFT and UP.side((150, 100), 5) == RIGHT
    assert UP.side((103, 100), 5) == ON and UP.side((100, 100), 5) == ON
    assert UP.side((50, 250), 5) is None and UP.side((150, -1), 5) is None  # past its ends
    across = Line("floor", (0.0, 50.0), (200.0, 50.0))  # drawn left to right
    assert across.side((100, 10), 1) == LEFT and across.side((100, 90), 1) == RIGHT  # in is down


def test_exact_counts_on_scripted_crossings_both_ways() -> None:
    counter = LineCounter(UP, min_frames=1)
    assert walk(counter, [20, 60, 140, 180, 140, 60, 20, 150]) == ["in", "out", "in"]
    assert (counter.count_in, counter.count_out) == (2, 1)
    # right_to_left swaps the names, never the counting.
    flipped = LineCounter(Line("door", UP.start, UP.end, in_from=RIGHT), min_frames=1)
    assert walk(flipped, [20, 60, 140, 180, 140, 60, 20, 150]) == ["out", "in", "out"]


def test_each_track_is_counted_on_its_own() -> None:
    counter = LineCounter(UP, min_frames=1)
    for x1, x2 in [(50, 150), (60, 140), (150, 50), (140, 60)]:
        counter.observe(1, (x1, 100), 5)
        counter.observe(2, (x2, 100), 5)
    assert (counter.count_in, counter.count_out) == (1, 1)


def test_lingering_on_the_line_is_not_a_crossing_and_leaving_it_counts_once() -> None:
    counter = LineCounter(UP, min_frames=1)
    # Walks up, stands on the line (within the margin) for a while, goes back: nothing.
    assert walk(counter, [40, 80, 97, 102, 99, 104, 100, 96, 60, 30]) == []
    # Stands on it again, then leaves on the other side: one in, however long it lingered.
    assert walk(counter, [98, 101, 103, 99, 102, 100, 130, 160, 190]) == ["in"]
    assert (counter.count_in, counter.count_out) == (1, 0)


def test_jitter_across_the_line_within_the_margin_counts_once() -> None:
    counter = LineCounter(UP, min_frames=1)
    xs = [40, 70, 96, 104, 96, 104, 97, 103, 96, 104, 150, 180]  # crosses x = 100 six times
    assert walk(counter, xs) == ["in"]


def test_min_frames_ignores_a_step_over_and_straight_back() -> None:
    counter = LineCounter(UP, min_frames=2)
    assert walk(counter, [40, 60, 130, 60, 40]) == []  # one frame over: a stray box
    assert walk(counter, [60, 130, 100, 140, 160]) == ["in"]  # the line frame is skipped
    assert counter.count_in == 1


def test_going_round_an_end_of_the_line_is_not_a_crossing() -> None:
    counter = LineCounter(UP, min_frames=1)
    points = [(50, 100), (50, 260), (150, 260), (150, 100)]  # below its lower end, y > 200
    assert [counter.observe(1, point, 5) for point in points] == [None] * 4
    assert counter.count_in == counter.count_out == 0


def test_a_forgotten_track_starts_over() -> None:
    counter = LineCounter(UP, min_frames=1)
    walk(counter, [50])
    counter.forget(1)
    assert walk(counter, [150, 50]) == ["out"]  # its reference is now the right


# ------------------------------------------------------------------ parameters


def lines(*specs: Mapping[str, Any]) -> dict[str, Any]:
    return {"lines": list(specs)}


DOOR = {"name": "door", "from": {"x": 100, "y": 200}, "to": {"x": 100, "y": 0}}


def test_schema_is_valid_and_defaults_are_filled() -> None:
    analytic = LineCrossing()
    schema = analytic.parameters_schema()
    check_schema({**schema, "required": []})  # its defaults, once lines are given
    assert all(prop.get("description") for prop in schema["properties"].values())
    filled = analytic.validate(lines(DOOR), "analytics[0].parameters")
    assert filled["lines"] == [{**DOOR, "mode": "abs", "direction": "left_to_right"}]
    assert (filled["anchor"], filled["min_distance"], filled["min_frames"]) == ("bottom_center", 0.1, 2)
    assert filled["targets"] == ["overview"] and filled["max_age"] == 10


@pytest.mark.parametrize(
    "parameters, path, words",
    [
        ({}, "analytics[0].parameters.lines", "required"),
        ({"lines": []}, "analytics[0].parameters.lines", "should be non-empty"),
        (lines({**DOOR, "to": {"x": 100, "y": 200}}), "analytics[0].parameters.lines[0].to", "no length"),
        (
            lines(DOOR, {**DOOR, "from": {"x": 0, "y": 0}}),
            "analytics[0].parameters.lines[1].name",
            "duplicate line name 'door'",
        ),
        (lines({**DOOR, "direction": "inwards"}), "analytics[0].parameters.lines[0].direction", "one of"),
        (lines({**DOOR, "to": {"x": 100}}), "analytics[0].parameters.lines[0].to.y", "required"),
        (lines({**DOOR, "from": {"x": -1, "y": 0}}), "analytics[0].parameters.lines[0].from.x", "minimum"),
        (
            lines({**DOOR, "mode": "percent", "to": {"x": 50, "y": 120}}),
            "analytics[0].parameters.lines[0].to.y",
            "maximum of 100",
        ),
        (lines({**DOOR, "name": ""}), "analytics[0].parameters.lines[0].name", "non-empty"),
        (lines({**DOOR, "colour": "red"}), "analytics[0].parameters.lines[0].colour", "unknown"),
        ({**lines(DOOR), "min_distance": 2}, "analytics[0].parameters.min_distance", "maximum"),
        ({**lines(DOOR), "anchor": "top"}, "analytics[0].parameters.anchor", "one of"),
    ],
)
def test_bad_lines_are_rejected_with_the_field(parameters: Any, path: str, words: str) -> None:
    with pytest.raises(LunaError) as info:
        LineCrossing().validate(parameters, "analytics[0].parameters")
    assert info.value.spec is BAD_JSON and info.value.code == 12027
    assert info.value.detail.startswith(f"{path}: "), info.value.detail
    assert words in info.value.detail, info.value.detail
    assert info.value.extra == {"path": path}


# ------------------------------------------------------------------ the analytic, fake detector


def frame(number: int, size: tuple[int, int] = (400, 300)) -> Frame:
    width, height = size
    return Frame(STREAM, np.zeros((height, width, 3), np.uint8), number, number * 0.2, 0.0, size)


def outputs(boxes: Sequence[tuple[Box, float]]) -> dict[str, np.ndarray[Any, Any]]:
    out = {
        "BOXES": np.zeros((K, 4), np.float32),
        "SCORES": np.zeros(K, np.float32),
        "COUNT": np.array([len(boxes)], np.int32),
    }
    for row, (box, score) in enumerate(sorted(boxes, key=lambda b: -b[1])):
        out["BOXES"][row], out["SCORES"][row] = box, score
    return out


class Script:
    """``infer`` answering each role's calls from its own script of frames."""

    def __init__(self, **scripts: Sequence[Sequence[tuple[Box, float]]]) -> None:
        self.scripts = {role: list(script) for role, script in scripts.items()}
        self.calls: list[str] = []

    async def __call__(self, role: str, inputs: Mapping[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
        self.calls.append(role)
        return outputs(self.scripts[role].pop(0))


def person(cx: float, score: float = 0.9) -> tuple[Box, float]:
    """A person 0.2 wide and 0.5 tall (80x150 px on the 400x300 frame), feet at y = 0.9, centred on cx."""
    return (cx - 0.1, 0.4, cx + 0.1, 0.9), score


async def run_crossing(parameters: Mapping[str, Any], script: Sequence[Sequence[tuple[Box, float]]]) -> Any:
    analytic = LineCrossing()
    state = analytic.start(STREAM, parameters)
    infer = Script(detector=script)
    events = []
    for number in range(len(script)):
        events.extend(await analytic.process(frame(number), state, infer))
    return events, state, infer


async def test_the_analytic_counts_tracked_people_on_each_line() -> None:
    # Line at x = 50 % (200 px of 400), drawn bottom to top; the feet are at y = 270 px.
    parameters = {
        "lines": [
            {"name": "door", "from": {"x": 50, "y": 100}, "to": {"x": 50, "y": 0}, "mode": "percent"},
            {"name": "gate", "from": {"x": 300, "y": 0}, "to": {"x": 300, "y": 300}},  # drawn downwards
        ],
        "min_frames": 1,
        "targets": [],
    }
    out_and_back = [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85]
    xs = out_and_back + out_and_back[-2::-1]
    events, _, infer = await run_crossing(parameters, [[person(x)] for x in xs])
    summary = [(e["line"], e["direction"], e["in"], e["out"], e["frame_number"]) for e in events]
    # The margin is a tenth of 150 px, 0.0375 of the width. door (0.5): in at 0.55 (frame 5),
    # out at 0.45 (frame 19). gate (0.75) is drawn downwards, so its left is the picture's
    # right: walking right is right to left, out (0.8, frame 10); back is in (0.7, frame 14).
    assert summary == [
        ("door", "in", 1, 0, 5),
        ("gate", "out", 0, 1, 10),
        ("gate", "in", 1, 1, 14),
        ("door", "out", 1, 1, 19),
    ]
    assert len({e["track_id"] for e in events}) == 1
    first = events[0]
    assert first["event_type"] == "line_crossing" and first["stream_id"] == STREAM
    assert first["body_detection"] == {"rect": {"x": 180, "y": 120, "width": 80, "height": 150}, "score": 0.9}
    assert first["time_offset"] == pytest.approx(1.0) and "overview" not in first
    assert infer.calls == ["detector"] * len(xs)


async def test_events_carry_the_overview_image_and_lingering_counts_nothing() -> None:
    parameters = {"lines": [{"name": "door", "from": {"x": 200, "y": 300}, "to": {"x": 200, "y": 0}}]}
    # Margin: a tenth of 150 px = 15 px = 0.0375 of the width. Lingers within it, goes back.
    lingering = [0.3, 0.35, 0.4, 0.45, 0.48, 0.52, 0.49, 0.53, 0.5, 0.47, 0.45, 0.4, 0.35, 0.3]
    events, _, _ = await run_crossing(parameters, [[person(x)] for x in lingering])
    assert events == []
    events, _, _ = await run_crossing(
        parameters, [[person(x)] for x in [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65]]
    )
    (event,) = events
    assert event["direction"] == "in" and event["frame_number"] == 6  # min_frames 2: 0.55 then 0.6
    image = event["overview"]["image"]
    assert isinstance(image, ImageRequest) and image.pixels is not None


async def test_a_track_lost_mid_crossing_counts_only_once_it_is_seen_again() -> None:
    parameters = {"lines": [DOOR | {"from": {"x": 200, "y": 300}, "to": {"x": 200, "y": 0}}], "min_frames": 1}
    # Missed on two frames (max_age 10 keeps the track and its side): still one in.
    script = [[person(0.3)], [person(0.35)], [person(0.4)], [], [], [person(0.55)], [person(0.6)]]
    events, _, _ = await run_crossing(parameters, script)
    assert [(e["direction"], e["in"]) for e in events] == [("in", 1)]
    # With max_age 0 the track ends, and the new one has no side to have crossed from.
    events, _, _ = await run_crossing({**parameters, "max_age": 0}, script)
    assert events == []


# ------------------------------------------------------------------ human_tracking's bodies


async def test_human_tracking_tracks_bodies_with_the_body_detector() -> None:
    tracking = HumanTracking()
    assert tracking.validate({}, "p")["detectors"] == ["face"]
    state = tracking.start(STREAM, {"detectors": ["body"], "min_hits": 1, "max_age": 0, "targets": ["ags"]})
    infer = Script(body_detector=[[person(0.3)], [person(0.32)], []])
    events = []
    for number in range(3):
        events.extend(await tracking.process(frame(number), state, infer))
    assert infer.calls == ["body_detector"] * 3  # no face detector, no attributes for bodies
    assert [e["phase"] for e in events] == ["start", "end"]
    start = events[0]
    assert start["face_detection"] is None and start["age"] is None and start["gender"] is None
    assert start["body_detection"] == {"rect": {"x": 80, "y": 120, "width": 80, "height": 150}, "score": 0.9}


async def test_human_tracking_faces_and_bodies_at_once_keep_the_face_events_as_they_were() -> None:
    tracking = HumanTracking()
    parameters = {"min_hits": 1, "event_policy": {"update_interval": 0}}
    face = ((0.3, 0.2, 0.35, 0.27), 0.95)
    both = tracking.start(STREAM, {**parameters, "detectors": ["face", "body"]})
    faces = tracking.start(STREAM, parameters)
    infer_both = Script(detector=[[face], [face]], body_detector=[[person(0.3)], [person(0.3)]])
    infer_faces = Script(detector=[[face], [face]])
    with_bodies, alone = [], []
    for number in range(2):
        with_bodies.extend(await tracking.process(frame(number), both, infer_both))
        alone.extend(await tracking.process(frame(number), faces, infer_faces))
    assert sorted(infer_both.calls) == ["body_detector", "body_detector", "detector", "detector"]
    face_events = [e for e in with_bodies if e["face_detection"] is not None]
    body_events = [e for e in with_bodies if e["face_detection"] is None]
    assert [e["phase"] for e in body_events] == ["start", "update"] and all(
        "body_detection" in e for e in body_events
    )

    def same(event: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in event.items() if k not in ("event_id", "track_id", "event_create_time")}

    assert [same(e) for e in face_events] == [same(e) for e in alone]
    assert all("body_detection" not in e for e in alone)
    assert len({e["track_id"] for e in with_bodies}) == 2  # a face track and a body track
    ended = tracking.stop(both)
    assert sorted(e["face_detection"] is None for e in ended) == [False, True]
