"""line_crossing: people tracked across frames, counted as they cross named line segments.

Each analysed frame goes through the ``detector`` role (a person detector of the detector
contract, ``person_detector`` by default). The boxes feed the numpy ``Tracker`` (tracker.py,
ByteTrack-style) in source-frame pixels. Every confirmed track matched on the frame gives one
point per frame, its **anchor**: the bottom centre of its box (where the feet are) or its centre.

A line is a segment ``from`` -> ``to``. The anchor's side of it is read from its signed distance
to the segment: **left** or **right** as seen walking from ``from`` to ``to`` on the picture
(y pointing down), **on** the line when it is within ``min_distance`` x the box's height of it,
and **off** when its projection falls outside the segment's ends. A track's reference side is the
first side it is seen on; it crosses when it is then seen on the other side on ``min_frames``
consecutive observations (frames on the line do not count and do not break the run; a frame
back on the reference side does). So a person who lingers on the line, or jitters across it
by less than the margin, is counted once at most, when they leave it on the other side; one who
steps over and straight back within fewer than ``min_frames`` frames is not counted. A frame off
the segment forgets the track's side, so going round an end of the line is never a crossing.

Which way is ``in`` is the line's ``direction``: ``left_to_right`` (the default) counts crossings
from the left of from -> to to its right as ``in``, the others as ``out``. For a line drawn left to
right across the picture, ``in`` is walking down the picture; drawn bottom to top, ``in`` is
walking towards the picture's right edge.

Each crossing is one event, with the line's running ``in`` and ``out`` totals since the session
started (a reconnection starts them again, as it starts the tracks again).

The pure logic (:class:`Line`, :class:`LineCounter`) knows nothing about frames or models, so
the tests script tracks through it directly.
"""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lva_common.errors import invalid
from lva_core.analytics.base import Event, InferFn
from lva_core.analytics.detections import Detections, now_iso, rect
from lva_core.analytics.tracker import Tracker
from lva_core.analytics.validation import json_path, validate
from lva_core.images.policy import ImagePolicy, image_policy_schema
from lva_core.images.request import ImageRequest
from lva_core.pipeline.frame import Frame

LEFT, ON, RIGHT = -1, 0, 1
# A line shorter than this (in source pixels, once percent is resolved) has no usable direction.
_MIN_LENGTH = 1.0


def _point_schema(what: str) -> dict[str, Any]:
    number = {"type": "number", "minimum": 0}
    return {
        "type": "object",
        "description": f"{what}: x and y in the line's mode (pixels of the source frame, or percent).",
        "properties": {"x": {**number, "description": "x."}, "y": {**number, "description": "y."}},
        "required": ["x", "y"],
        "additionalProperties": False,
    }


_PERCENT_POINT = {"properties": {"x": {"maximum": 100}, "y": {"maximum": 100}}}

LINE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One named line segment.",
    "additionalProperties": False,
    "properties": {
        "name": {
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "description": "The line's name, unique among the lines: events carry it as `line`.",
        },
        "from": _point_schema("Where the segment starts"),
        "to": _point_schema("Where the segment ends"),
        "mode": {
            "enum": ["abs", "percent"],
            "default": "abs",
            "description": (
                "abs: pixels of the source frame (after the stream's rotation, before its roi "
                "crop); percent: percent (0-100) of the source frame's width and height."
            ),
        },
        "direction": {
            "enum": ["left_to_right", "right_to_left"],
            "default": "left_to_right",
            "description": (
                "Which crossing counts as `in`: left_to_right, from the left of the from->to "
                "vector to its right, as seen walking from `from` to `to` on the picture (for a "
                "line drawn left to right, `in` is walking down the picture; drawn bottom to "
                "top, towards its right edge); right_to_left, the opposite. The other way is `out`."
            ),
        },
    },
    "required": ["name", "from", "to"],
    "if": {"type": "object", "properties": {"mode": {"const": "percent"}}},
    "then": {"properties": {"from": _PERCENT_POINT, "to": _PERCENT_POINT}},
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "line_crossing parameters",
    "type": "object",
    "additionalProperties": False,
    "required": ["lines"],
    "properties": {
        "lines": {
            "type": "array",
            "minItems": 1,
            "maxItems": 16,
            "items": LINE_SCHEMA,
            "description": (
                "The line segments to count crossings of (1-16), each with a unique name. "
                "Every tracked person is counted on every line they cross, each way."
            ),
        },
        "anchor": {
            "enum": ["bottom_center", "center"],
            "default": "bottom_center",
            "description": (
                "The point of a person's box that must cross the line: bottom_center (where the "
                "feet are: right for lines drawn on the floor) or center."
            ),
        },
        "min_distance": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0.1,
            "description": (
                "How far past the line the anchor must be to count as on a side, as a fraction "
                "of the person's box height (0.1: a tenth of their height). Closer, the person "
                "is on the line: lingering or jittering there never counts."
            ),
        },
        "min_frames": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "default": 2,
            "description": (
                "Consecutive observations of a track on the new side before its crossing counts "
                "(frames on the line are skipped; a frame back on the old side starts over). "
                "2 ignores a single stray box."
            ),
        },
        "score_threshold": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0,
            "description": (
                "Person detections scoring below this are ignored, on top of the detector model's "
                "own threshold (0: keep every detection the model returns)."
            ),
        },
        "start_score_threshold": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0.5,
            "description": (
                "A person must score at least this to start a track; weaker detections only "
                "continue existing tracks (ByteTrack's second association stage)."
            ),
        },
        "iou_threshold": {
            "type": "number",
            "minimum": 0.01,
            "maximum": 1,
            "default": 0.3,
            "description": (
                "Minimum overlap (intersection over union) between a track's predicted box and a "
                "detection for them to match. Lower follows faster motion at low analysis rates."
            ),
        },
        "min_hits": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "default": 2,
            "description": (
                "Consecutive analysed frames a new person must be detected in before it is tracked."
            ),
        },
        "max_age": {
            "type": "integer",
            "minimum": 0,
            "maximum": 1000,
            "default": 10,
            "description": (
                "Consecutive analysed frames a tracked person may go undetected and keep the same "
                "track (and the side of each line they were on)."
            ),
        },
        "targets": {
            "type": "array",
            "items": {"enum": ["overview"]},
            "uniqueItems": True,
            "default": ["overview"],
            "description": (
                "overview: an event carries overview.image, the URL (/1/images/{image_id}) of the "
                "frame's picture as it was analysed (after the stream's rotation and roi crop), "
                "stored by image_retain_policy (null when the core keeps no images or could not "
                "store it). []: no image."
            ),
        },
        "image_retain_policy": image_policy_schema(),
    },
}
SCHEMA["properties"]["image_retain_policy"]["description"] += (
    " With the overview target: the image of overview.image, the analysed picture."
)


# ------------------------------------------------------------------ the pure crossing logic


@dataclass(frozen=True)
class Line:
    """A segment in source-frame pixels, and which crossing is ``in``."""

    name: str
    start: tuple[float, float]
    end: tuple[float, float]
    in_from: int = LEFT  # the side an ``in`` crossing comes from

    @property
    def length(self) -> float:
        return math.hypot(self.end[0] - self.start[0], self.end[1] - self.start[1])

    def side(self, point: tuple[float, float], margin: float) -> int | None:
        """LEFT, RIGHT or ON (within ``margin`` of it) for ``point``; None off the segment's ends."""
        (ax, ay), (bx, by), (px, py) = self.start, self.end, point
        dx, dy, length = bx - ax, by - ay, self.length
        along = ((px - ax) * dx + (py - ay) * dy) / length
        if along < 0 or along > length:
            return None
        # y points down: a positive cross product is the right of from -> to, as seen on the picture.
        distance = (dx * (py - ay) - dy * (px - ax)) / length
        if abs(distance) <= margin:
            return ON
        return RIGHT if distance > 0 else LEFT


@dataclass
class _Side:
    """A track's state on one line: the side it was last established on, and a run on the other."""

    reference: int = ON  # ON: not known yet
    run: int = 0


@dataclass
class LineCounter:
    """Crossings of one line by tracks: ``observe`` each track's anchor on each frame it is seen."""

    line: Line
    min_frames: int = 2
    count_in: int = 0
    count_out: int = 0
    sides: dict[int, _Side] = field(default_factory=dict)

    def observe(self, track: int, point: tuple[float, float], margin: float) -> str | None:
        """``"in"`` or ``"out"`` when this observation completes a crossing of ``track``, else None."""
        side = self.line.side(point, margin)
        if side is None:  # off the segment: going round an end is no crossing
            self.sides.pop(track, None)
            return None
        state = self.sides.setdefault(track, _Side())
        if side == ON:
            return None
        if state.reference == ON:
            state.reference = side  # the first side seen: nothing was crossed to get there
            return None
        if side == state.reference:
            state.run = 0
            return None
        state.run += 1
        if state.run < self.min_frames:
            return None
        direction = "in" if state.reference == self.line.in_from else "out"
        state.reference, state.run = side, 0
        if direction == "in":
            self.count_in += 1
        else:
            self.count_out += 1
        return direction

    def forget(self, track: int) -> None:
        self.sides.pop(track, None)


def anchor_of(box: np.ndarray[Any, Any] | tuple[float, ...], anchor: str) -> tuple[float, float]:
    """The anchor point of a box x1, y1, x2, y2."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return ((x1 + x2) / 2, y2 if anchor == "bottom_center" else (y1 + y2) / 2)


def resolve_line(spec: Mapping[str, Any], source_size: tuple[int, int]) -> Line:
    """A validated ``lines[i]`` as a :class:`Line` in pixels of a source of ``source_size``."""
    sx, sy = (source_size[0] / 100, source_size[1] / 100) if spec.get("mode") == "percent" else (1.0, 1.0)
    start = (float(spec["from"]["x"]) * sx, float(spec["from"]["y"]) * sy)
    end = (float(spec["to"]["x"]) * sx, float(spec["to"]["y"]) * sy)
    in_from = LEFT if spec.get("direction", "left_to_right") == "left_to_right" else RIGHT
    return Line(str(spec["name"]), start, end, in_from)


def check_lines(lines: list[Mapping[str, Any]], path: str) -> None:
    """What the schema cannot say: names are unique, and no line has (almost) no length."""
    seen: set[str] = set()
    for index, spec in enumerate(lines):
        here = json_path(path, [index])
        if spec["name"] in seen:
            raise invalid(json_path(here, ["name"]), f"duplicate line name {spec['name']!r}")
        seen.add(spec["name"])
        # In percent the source size is unknown until decoding: check on a 100x100 source, where
        # one unit is one percent (any real source is at least that fine).
        if resolve_line(spec, (100, 100)).length < _MIN_LENGTH * (0.01 if spec["mode"] == "percent" else 1):
            raise invalid(json_path(here, ["to"]), "the line has no length: 'to' must differ from 'from'")


# ------------------------------------------------------------------ the analytic


@dataclass(frozen=True)
class Settings:
    lines: tuple[Mapping[str, Any], ...]
    anchor: str
    min_distance: float
    min_frames: int
    score_threshold: float
    start_score_threshold: float
    iou_threshold: float
    min_hits: int
    max_age: int
    overview: bool
    image_policy: ImagePolicy

    @classmethod
    def parse(cls, parameters: Mapping[str, Any]) -> Settings:
        return cls(
            lines=tuple(parameters["lines"]),
            anchor=str(parameters["anchor"]),
            min_distance=float(parameters["min_distance"]),
            min_frames=int(parameters["min_frames"]),
            score_threshold=float(parameters["score_threshold"]),
            start_score_threshold=float(parameters["start_score_threshold"]),
            iou_threshold=float(parameters["iou_threshold"]),
            min_hits=int(parameters["min_hits"]),
            max_age=int(parameters["max_age"]),
            overview="overview" in parameters["targets"],
            image_policy=ImagePolicy.from_parameters(parameters["image_retain_policy"]),
        )


@dataclass
class CrossingState:
    stream_id: str
    settings: Settings
    tracker: Tracker
    counters: list[LineCounter] = field(default_factory=list)
    source_size: tuple[int, int] | None = None
    uids: dict[int, str] = field(default_factory=dict)


class LineCrossing:
    """The line_crossing analytic (see the module docstring and the parameters' schema)."""

    name = "line_crossing"
    version = "1.0.0"
    description = (
        "Tracks people from a person detector and counts them crossing named line segments, each "
        "way: an event per crossing with the track, the line, the direction (in or out) and the "
        "line's running in and out totals."
    )
    roles: Mapping[str, str] = {"detector": "detector"}

    def parameters_schema(self) -> dict[str, Any]:
        return copy.deepcopy(SCHEMA)

    def validate(self, parameters: Mapping[str, Any], path: str) -> dict[str, Any]:
        validated = validate(SCHEMA, parameters, path)
        check_lines(validated["lines"], json_path(path, ["lines"]))
        return validated

    def start(self, stream_id: str, parameters: Mapping[str, Any]) -> CrossingState:
        settings = Settings.parse(self.validate(parameters, "parameters"))
        tracker = Tracker(
            iou_threshold=settings.iou_threshold,
            min_hits=settings.min_hits,
            max_age=settings.max_age,
            high_score=settings.start_score_threshold,
        )
        return CrossingState(stream_id, settings, tracker)

    def _counters(self, state: CrossingState, source_size: tuple[int, int]) -> list[LineCounter]:
        """The lines in this source's pixels; built on the first frame (percent needs the size)."""
        if state.source_size != source_size:
            if state.counters:  # the source changed size: keep the totals, not the sides
                for counter, spec in zip(state.counters, state.settings.lines, strict=True):
                    counter.line = resolve_line(spec, source_size)
                    counter.sides.clear()
            else:
                state.counters = [
                    LineCounter(resolve_line(spec, source_size), state.settings.min_frames)
                    for spec in state.settings.lines
                ]
            state.source_size = source_size
        return state.counters

    async def process(self, frame: Frame, state: CrossingState, infer: InferFn) -> list[Event]:
        settings = state.settings
        outputs = await infer("detector", {"IMAGE": frame.pixels})
        found = Detections.in_roi(outputs, frame, settings.score_threshold, None)
        change = state.tracker.update(found.boxes, found.scores)
        counters = self._counters(state, frame.source_size)
        for track in change.ended:
            state.uids.pop(track.track_id, None)
            for counter in counters:
                counter.forget(track.track_id)
        events: list[Event] = []
        for track in [*change.started, *change.updated]:
            assert track.detection is not None
            box = found.boxes[track.detection]
            point = anchor_of(box, settings.anchor)
            margin = settings.min_distance * float(box[3] - box[1])
            for counter in counters:
                direction = counter.observe(track.track_id, point, margin)
                if direction is None:
                    continue
                uid = state.uids.setdefault(track.track_id, str(uuid.uuid4()))
                score = float(found.scores[track.detection])
                events.append(self._event(frame, state, uid, counter, direction, box, score))
        return events

    def stop(self, state: CrossingState) -> list[Event]:
        # A crossing is reported when it happens: nothing is left to flush.
        state.tracker.close()
        return []

    @staticmethod
    def _event(
        frame: Frame,
        state: CrossingState,
        uid: str,
        counter: LineCounter,
        direction: str,
        box: np.ndarray[Any, Any],
        score: float,
    ) -> Event:
        event: Event = {
            "event_type": "line_crossing",
            "event_id": str(uuid.uuid4()),
            "stream_id": state.stream_id,
            "event_create_time": now_iso(),
            "track_id": uid,
            "line": counter.line.name,
            "direction": direction,
            "in": counter.count_in,
            "out": counter.count_out,
            "body_detection": {"rect": rect(box), "score": round(score, 4)},
            "time_offset": frame.time_offset,
            "frame_number": frame.frame_number,
        }
        if state.settings.overview:
            # Encoded and stored by the worker, which puts the URL here (lva_core/images).
            event["overview"] = {"image": ImageRequest(frame.pixels, state.settings.image_policy)}
        return event
