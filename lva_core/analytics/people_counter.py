"""people_counter: LUNA's "crowd" event, from a person detector's boxes.

For each analysed frame the analytic counts the person detections that stand in its zones:
whose box centre lies inside its rectangle ``roi`` (LUNA's), or whose anchor point (``anchor``:
the bottom centre of the box by default) lies in its polygon ``roi`` and ``droi``
(lva_core/analytics/zones.py). Detections outside are neither counted nor listed.

A state machine turns these counts into events: the stream is "crowded" once
``probe_count`` consecutive analysed frames count at least ``people_count_threshold`` people,
and no longer crowded once ``probe_count`` consecutive analysed frames count fewer. Requiring
several agreeing frames both ways (hysteresis) is what keeps one missed or one spurious
detection from producing a start/end pair. ``event_policy`` then says which of these moments
are reported: the start of a crowd, its end, or its state every ``interval`` seconds while it
lasts. An event describes the frame it is emitted on: ``people_count`` and the detections are
that frame's, so that the count always equals the number of coordinates.

Coordinates are source-frame pixels: the detector's boxes are normalised to ``frame.image``
(the stream's rotated, ROI-cropped picture), so they are scaled by ``frame.size`` and shifted by
``frame.offset``.

With the ``overview`` target an event also carries ``overview.image``: the analysed picture
(``frame.image``) as an :class:`ImageRequest`, which the worker stores by the stream's
``image_retain_policy`` and replaces by its URL before the event is published. The request
holds a reference to the frame's pixels, no copy; only events cost an encode.
"""

from __future__ import annotations

import copy
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lva_core.analytics.base import Event, InferFn
from lva_core.analytics.detections import Detections, now_iso, rect
from lva_core.analytics.validation import check_roi, json_path, roi_schema, validate
from lva_core.analytics.zones import (
    MAX_POLYGONS,
    Zones,
    anchor_schema,
    anchors,
    check_polygons,
    polygon_schema,
    polygons_schema,
)
from lva_core.images.policy import ImagePolicy, image_policy_schema
from lva_core.images.request import ImageRequest
from lva_core.pipeline.frame import Frame

# Stream time may come from decoder timestamps: a period of 1 s must not be skipped because a
# frame lands a few microseconds early.
_TIME_EPSILON = 1e-6


SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "people_counter parameters",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        # LUNA's rectangle, or (an array) polygons: one schema, as properties only apply to
        # objects and items only to arrays, so that defaults are filled in either form.
        "roi": {
            **roi_schema(
                "only people whose box centre lies inside it are counted (the whole frame is still "
                "analysed, so people cut by the roi's edge are found as well as any other). "
                "Instead of the rectangle, roi may be an array of polygons, as droi (and then "
                "people count by their anchor point, as in droi); a person must pass both roi and "
                "droi."
            ),
            "type": ["object", "array", "null"],
            "items": polygon_schema(),
            "minItems": 1,
            "maxItems": MAX_POLYGONS,
        },
        "droi": {
            **polygons_schema(
                "LUNA's droi, a filter of the people found: only those standing in its polygons "
                "are counted (the whole frame is still analysed). A polygon with exclude: true "
                "takes the people standing in it out of the count instead. null (the default): no "
                "filter."
            ),
            "type": ["array", "null"],
            "default": None,
        },
        "anchor": anchor_schema(),
        "rate": {
            "type": "object",
            "description": (
                "How often a frame is analysed, on top of the stream's frame_processing sampling: "
                "analysis times lie on a fixed grid of `period` units from the first analysed "
                "frame, and the first sampled frame at or past each grid point is analysed, so the "
                "rate never drifts. Frames in between are not sent to the detector at all."
            ),
            "default": {"period": 1, "unit": "second"},
            "additionalProperties": False,
            "properties": {
                "period": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "default": 1,
                    "description": "Units between two analysed frames (a whole number >= 1 for frames).",
                },
                "unit": {
                    "enum": ["second", "frame"],
                    "default": "second",
                    "description": "second: of stream time (time_offset); frame: of source frame numbers.",
                },
            },
            "if": {"type": "object", "properties": {"unit": {"const": "frame"}}},
            "then": {"properties": {"period": {"type": "integer", "minimum": 1}}},
        },
        "probe_count": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "default": 2,
            "description": (
                "Consecutive analysed frames that must agree before the crowd state changes: it "
                "starts after probe_count frames with people_count >= people_count_threshold, and "
                "ends after probe_count frames below it. 1 reacts to every frame; more suppresses "
                "flicker from single missed or spurious detections."
            ),
        },
        "people_count_threshold": {
            "type": "integer",
            "minimum": 0,
            "default": 1,
            "description": (
                "People (standing in the roi and droi) from which a frame counts as crowded. 0 makes every "
                "frame crowded: with the period trigger, the count is reported every interval."
            ),
        },
        "event_policy": {
            "type": "object",
            "description": "Which moments of the crowd state produce an event.",
            "default": {"trigger": "start", "interval": 1},
            "additionalProperties": False,
            "properties": {
                "trigger": {
                    "enum": ["start", "end", "period"],
                    "default": "start",
                    "description": (
                        "start: one event when a crowd starts; end: one event when it ends (with "
                        "the count that ended it); period: an event when it starts, then one every "
                        "interval seconds of stream time while it lasts."
                    ),
                },
                "interval": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "default": 1,
                    "description": "Seconds between events of the period trigger (ignored otherwise).",
                },
            },
        },
        "targets": {
            "type": "array",
            "description": (
                "What an event carries besides people_count: coordinates adds the detections "
                "(rect and score) and overview.people_coordinates (box centres); overview adds "
                "overview.time_offset and overview.frame_number, the frame the event describes, "
                "and overview.image, the URL (/1/images/{image_id}) of that frame's picture as "
                "it was analysed: after the stream's rotation and roi crop, stored by "
                "image_retain_policy (null when the core keeps no images or could not store it)."
            ),
            "items": {"enum": ["coordinates", "overview"]},
            "uniqueItems": True,
            "default": ["coordinates", "overview"],
        },
        "score_threshold": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0,
            "description": (
                "Detections scoring below this are ignored, on top of the detector model's own "
                "threshold (0: keep every detection the model returns)."
            ),
        },
        "image_retain_policy": image_policy_schema(),
    },
}
SCHEMA["properties"]["image_retain_policy"]["description"] += (
    " With the overview target: the image of overview.image, the analysed picture (after the "
    "stream's rotation and the stream's roi crop; this analytic's own roi and droi only filter people)."
)


@dataclass(frozen=True)
class Settings:
    """Validated parameters, typed (JSON numbers may arrive as floats, e.g. through protobuf Struct)."""

    roi: Mapping[str, Any] | None  # LUNA's rectangle
    zones: tuple[Zones, ...]  # the polygon roi and droi, each a filter the people must pass
    anchor: str
    period: float
    unit: str
    probe_count: int
    threshold: int
    trigger: str
    interval: float
    coordinates: bool
    overview: bool
    score_threshold: float
    image_policy: ImagePolicy

    @classmethod
    def parse(cls, parameters: Mapping[str, Any]) -> Settings:
        rate, policy, targets = parameters["rate"], parameters["event_policy"], parameters["targets"]
        roi, droi = parameters["roi"], parameters["droi"]
        polygons = [Zones.parse(area) for area in (roi, droi) if isinstance(area, list)]
        return cls(
            roi=roi if isinstance(roi, Mapping) else None,
            zones=tuple(polygons),
            anchor=str(parameters["anchor"]),
            period=float(rate["period"]),
            unit=str(rate["unit"]),
            probe_count=int(parameters["probe_count"]),
            threshold=int(parameters["people_count_threshold"]),
            trigger=str(policy["trigger"]),
            interval=float(policy["interval"]),
            coordinates="coordinates" in targets,
            overview="overview" in targets,
            score_threshold=float(parameters["score_threshold"]),
            image_policy=ImagePolicy.from_parameters(parameters["image_retain_policy"]),
        )


@dataclass
class CounterState:
    stream_id: str
    settings: Settings
    # The last probe_count verdicts (count >= threshold) of analysed frames.
    verdicts: deque[bool] = field(default_factory=deque)
    crowded: bool = False
    # The rate's clock (frame number or time offset) of the last analysed frame, and when the
    # next frame is due.
    last_value: float | None = None
    next_due: float | None = None
    last_event_time: float | None = None


class PeopleCounter:
    """The people_counter analytic (see the module docstring and the parameters' schema)."""

    name = "people_counter"
    version = "1.0.0"
    description = (
        "Counts the people a person detector finds inside a region of interest and reports crowds "
        "(LUNA's 'crowd' event): when the count reaches a threshold, when it drops below it, or "
        "periodically while it stays above, with the people's coordinates in source-frame pixels."
    )
    roles: Mapping[str, str] = {"detector": "detector"}

    def parameters_schema(self) -> dict[str, Any]:
        # A copy: whoever renders or extends it must not change what validate uses.
        return copy.deepcopy(SCHEMA)

    def validate(self, parameters: Mapping[str, Any], path: str) -> dict[str, Any]:
        validated = validate(SCHEMA, parameters, path)
        roi = validated["roi"]
        if isinstance(roi, list):
            check_polygons(roi, json_path(path, ["roi"]))
        else:
            check_roi(roi, json_path(path, ["roi"]))
        check_polygons(validated["droi"], json_path(path, ["droi"]))
        return validated

    def start(self, stream_id: str, parameters: Mapping[str, Any]) -> CounterState:
        # Validated again so that state never depends on the caller having filled the defaults.
        settings = Settings.parse(self.validate(parameters, "parameters"))
        return CounterState(stream_id, settings, deque(maxlen=settings.probe_count))

    def _due(self, frame: Frame, state: CounterState) -> bool:
        """Whether ``rate`` lets this frame be analysed (and, if so, when the next one is due).

        Due times lie on a grid of ``period`` from the first analysed frame rather than at
        ``period`` after the last one: frames sampled every 0.4 s with a period of 1 s are then
        analysed at 0, 1.2, 2.0, 3.2 s (on average once a second) instead of drifting to one
        every 1.2 s. After a gap longer than a period the grid restarts at the frame that ended it.
        """
        settings = state.settings
        value = float(frame.frame_number) if settings.unit == "frame" else frame.time_offset
        last, next_due = state.last_value, state.next_due
        if last is None or next_due is None or value < last:
            due = True  # the first frame, or the source started over (a restart, a looped file)
            next_due = value
        else:
            due = value >= next_due - _TIME_EPSILON
        if due:
            next_due += settings.period
            state.next_due = next_due if next_due > value + _TIME_EPSILON else value + settings.period
            state.last_value = value
        return due

    async def process(self, frame: Frame, state: CounterState, infer: InferFn) -> list[Event]:
        if not self._due(frame, state):
            return []
        settings = state.settings
        outputs = await infer("detector", {"IMAGE": frame.pixels})
        found = self._in_zones(
            Detections.in_roi(outputs, frame, settings.score_threshold, settings.roi), frame, settings
        )
        boxes, scores, centres = found.boxes, found.scores, found.centres
        count = len(boxes)

        state.verdicts.append(count >= settings.threshold)
        was_crowded = state.crowded
        if len(state.verdicts) == settings.probe_count and len(set(state.verdicts)) == 1:
            state.crowded = state.verdicts[0]

        emit = False
        if settings.trigger == "start":
            emit = state.crowded and not was_crowded
        elif settings.trigger == "end":
            emit = was_crowded and not state.crowded
        elif state.crowded:  # period: at the start, then every interval while crowded
            last = state.last_event_time
            emit = (
                not was_crowded
                or last is None
                or frame.time_offset < last  # the source started over
                or frame.time_offset - last >= settings.interval - _TIME_EPSILON
            )
        if not state.crowded:
            state.last_event_time = None
        if not emit:
            return []
        state.last_event_time = frame.time_offset
        return [self._event(frame, state, count, boxes, scores, centres)]

    @staticmethod
    def _in_zones(found: Detections, frame: Frame, settings: Settings) -> Detections:
        """The detections whose anchor stands in every polygon filter (roi, droi) of ``settings``."""
        if not settings.zones or len(found.boxes) == 0:
            return found
        points = anchors(found.boxes, settings.anchor)
        keep = np.ones(len(points), dtype=bool)
        for zones in settings.zones:
            keep &= zones.passes(points, frame.source_size)
        return Detections(found.rows[keep], found.boxes[keep], found.scores[keep], found.centres[keep])

    def _event(
        self,
        frame: Frame,
        state: CounterState,
        count: int,
        boxes: np.ndarray[Any, Any],
        scores: np.ndarray[Any, Any],
        centres: np.ndarray[Any, Any],
    ) -> Event:
        settings = state.settings
        event: Event = {
            "event_type": "crowd",
            "event_id": str(uuid.uuid4()),
            "stream_id": state.stream_id,
            "event_create_time": now_iso(),
            "people_count": count,
        }
        overview: dict[str, Any] = {}
        if settings.coordinates:
            overview["people_coordinates"] = [[round(float(x)), round(float(y))] for x, y in centres]
        if settings.overview:
            overview["time_offset"] = frame.time_offset
            overview["frame_number"] = frame.frame_number
            # Encoded and stored by the worker, which puts the URL here (lva_core/images).
            overview["image"] = ImageRequest(frame.pixels, settings.image_policy)
        if overview:
            event["overview"] = overview
        if settings.coordinates:
            event["detections"] = [
                {"rect": rect(box), "score": round(float(score), 4)}
                for box, score in zip(boxes, scores, strict=True)
            ]
        return event

    def stop(self, state: CounterState) -> list[Event]:
        # A crowd does not end because the stream does: nothing is flushed.
        return []
