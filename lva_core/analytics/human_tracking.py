"""human_tracking: faces from a face detector, tracked across frames, with optional age and gender.

Each analysed frame goes through the ``detector`` role (a model of the detector contract:
``BOXES``, ``SCORES``, ``COUNT`` and, if it has them, ``LANDMARKS``). Faces whose box centre is
outside ``roi`` are dropped; the rest feed the numpy ``Tracker`` (tracker.py) in source-frame
pixels. A confirmed track produces a ``start`` event, ``update`` events at most every
``event_policy.update_interval`` while it is seen, and an ``end`` event when it has been lost
for more than ``max_age`` analysed frames, or when the stream stops.

With the ``ags`` target (``attributes`` is accepted as a synonym), the ``attributes`` role (the
face_attributes contract) estimates age and gender: **one** call per frame for all the frame's
tracked faces. Its ``BOXES`` input keeps the detector's row count K, with the rows that are not
needed zeroed (the model skips rows with no area): requests of every stream then have equal
shapes and are batched together, by the core's batcher and by Triton's. A track's age and
gender are the running means of its per-frame estimates, so they firm up as it is seen more.

An event's ``face_detection``, ``time_offset`` and ``frame_number`` describe one frame: the
current one for start and update, the last one in which the face was seen for end.

``detectors`` chooses what is tracked: ``["face"]`` (the default, all of the above), ``["body"]``
or both. Bodies come from the ``body_detector`` role (a person detector of the detector contract,
``person_detector`` by default) and go through a tracker of their own with the same settings; a
body track's events carry ``body_detection`` (rect, score) and ``face_detection: null``, and no
age or gender. Face and body tracks are independent: a person seen by both detectors has two
tracks, not one. With both, the two detectors run on each frame concurrently.

With the ``best_shot`` target a track keeps a crop of its best-scoring face so far: the face's
box with a margin of ``_MARGIN`` of its size on each side, cut from the analysed picture (after
the stream's rotation and roi crop) and copied only when a detection scores higher than every
earlier one. Its start and end events carry it as ``best_shot``, an :class:`ImageRequest` that
the worker stores by ``image_retain_policy`` and replaces by its URL (update events: null).
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lva_core.analytics.base import Event, InferFn
from lva_core.analytics.detections import Detections, now_iso, rect
from lva_core.analytics.tracker import Track, Tracker
from lva_core.analytics.validation import check_roi, json_path, roi_schema, validate
from lva_core.images.policy import ImagePolicy, image_policy_schema
from lva_core.images.request import ImageRequest
from lva_core.pipeline.frame import Frame

_TIME_EPSILON = 1e-6
# The face_attributes contract, version 1: GENDER is the probability of the second of its
# gender_labels, "female,male" (the model refuses to load with other labels).
_GENDER_LABELS = ("female", "male")
# A best shot's margin around the face box, as a fraction of the box's width and height.
_MARGIN = 0.2

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "human_tracking parameters",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "roi": roi_schema(
            "only faces whose box centre lies inside it are tracked; a face that leaves it is "
            "lost, and its track ends after max_age analysed frames."
        ),
        "score_threshold": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0,
            "description": (
                "Face detections scoring below this are ignored, on top of the detector model's "
                "own threshold (0: keep every detection the model returns)."
            ),
        },
        "start_score_threshold": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0.6,
            "description": (
                "A face must score at least this to start a track; weaker detections only "
                "continue existing tracks (ByteTrack's second association stage), which keeps "
                "tracks alive through blur and partial occlusion without starting false ones."
            ),
        },
        "iou_threshold": {
            "type": "number",
            "minimum": 0.01,
            "maximum": 1,
            "default": 0.3,
            "description": (
                "Minimum overlap (intersection over union) between a track's predicted box and a "
                "detection for them to match. Lower follows faster motion at low analysis rates, "
                "higher confuses fewer neighbouring faces."
            ),
        },
        "min_hits": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "default": 2,
            "description": (
                "Consecutive analysed frames a new face must be detected in before its track "
                "starts (and its start event is sent); 1 starts tracks at once."
            ),
        },
        "max_age": {
            "type": "integer",
            "minimum": 0,
            "maximum": 1000,
            "default": 5,
            "description": (
                "Consecutive analysed frames a tracked face may go undetected and still continue "
                "the same track; its track ends on the next miss."
            ),
        },
        "event_policy": {
            "type": "object",
            "description": "Which track events are sent and how often.",
            "default": {"phases": ["start", "update", "end"], "update_interval": 1, "unit": "second"},
            "additionalProperties": False,
            "properties": {
                "phases": {
                    "type": "array",
                    "items": {"enum": ["start", "update", "end"]},
                    "uniqueItems": True,
                    "default": ["start", "update", "end"],
                    "description": "The track phases that produce events.",
                },
                "update_interval": {
                    "type": "number",
                    "minimum": 0,
                    "default": 1,
                    "description": (
                        "An update event is sent for a track seen on the current frame when at "
                        "least this many units have passed since its last event (0: every "
                        "analysed frame it is seen on)."
                    ),
                },
                "unit": {
                    "enum": ["second", "frame"],
                    "default": "second",
                    "description": "second: of stream time (time_offset); frame: of source frame numbers.",
                },
            },
        },
        "detectors": {
            "type": "array",
            "items": {"enum": ["face", "body"]},
            "uniqueItems": True,
            "minItems": 1,
            "default": ["face"],
            "description": (
                "What is tracked: face (the detector role, a face detector) and/or body (the "
                "body_detector role, a person detector). Each kind has a tracker of its own with "
                "the settings above; a body track's events carry body_detection (rect, score) "
                "and face_detection null, and never age or gender. A person seen by both has a "
                "face track and a body track."
            ),
        },
        "targets": {
            "type": "array",
            "items": {"enum": ["ags", "attributes", "best_shot"]},
            "uniqueItems": True,
            "default": [],
            "description": (
                "Estimations beyond face detection and tracking. ags (or its synonym attributes): "
                "age in years and gender, with gender_score, averaged over the frames the track "
                "was seen on (face tracks only). Without it, age, gender and gender_score are "
                "null. best_shot: the start and end events carry best_shot, the URL "
                "(/1/images/{image_id}) of a crop of the track's best-scoring face (or body) so "
                "far (its box with a margin, from the analysed picture: after the stream's "
                "rotation and roi crop), stored by image_retain_policy; null on update events, "
                "when the core keeps no images or could not store it. Without it, events have no best_shot."
            ),
        },
        "image_retain_policy": image_policy_schema(),
    },
}
SCHEMA["properties"]["image_retain_policy"]["description"] += (
    " With the best_shot target: the image of best_shot, a crop of the face."
)


@dataclass(frozen=True)
class Settings:
    roi: Mapping[str, Any] | None
    score_threshold: float
    start_score_threshold: float
    iou_threshold: float
    min_hits: int
    max_age: int
    phases: frozenset[str]
    update_interval: float
    unit: str
    attributes: bool
    best_shot: bool
    image_policy: ImagePolicy
    detectors: tuple[str, ...] = ("face",)

    @classmethod
    def parse(cls, parameters: Mapping[str, Any]) -> Settings:
        policy = parameters["event_policy"]
        return cls(
            roi=parameters["roi"],
            score_threshold=float(parameters["score_threshold"]),
            start_score_threshold=float(parameters["start_score_threshold"]),
            iou_threshold=float(parameters["iou_threshold"]),
            min_hits=int(parameters["min_hits"]),
            max_age=int(parameters["max_age"]),
            phases=frozenset(policy["phases"]),
            update_interval=float(policy["update_interval"]),
            unit=str(policy["unit"]),
            attributes=bool({"ags", "attributes"} & set(parameters["targets"])),
            best_shot="best_shot" in parameters["targets"],
            image_policy=ImagePolicy.from_parameters(parameters["image_retain_policy"]),
            # Faces first: their events come first on a frame where both kinds have some.
            detectors=tuple(kind for kind in ("face", "body") if kind in parameters["detectors"]),
        )


# The role each kind of track is detected by.
_ROLES = {"face": "detector", "body": "body_detector"}


@dataclass
class TrackInfo:
    """What the analytic keeps per track beyond the tracker's own state."""

    uid: str
    rect: dict[str, int]
    score: float
    landmarks: list[list[int]] | None
    frame_number: int
    time_offset: float
    last_event_frame: int = 0
    last_event_time: float = 0.0
    age_sum: float = 0.0
    male_sum: float = 0.0
    estimates: int = 0
    # The best_shot target: the crop of the best-scoring face so far (its own array: a later,
    # better one replaces it, never overwrites it), and that face's score.
    best_shot: np.ndarray[Any, Any] | None = None
    best_score: float = -1.0
    kind: str = "face"


@dataclass
class TrackingState:
    stream_id: str
    settings: Settings
    # One tracker per kind of track ("face", "body"), in the order of settings.detectors.
    trackers: dict[str, Tracker]
    # (kind, the tracker's track id) -> what the analytic keeps of the track.
    tracks: dict[tuple[str, int], TrackInfo] = field(default_factory=dict)

    @property
    def tracker(self) -> Tracker:
        """The first kind's tracker (the face tracker, unless only bodies are tracked)."""
        return next(iter(self.trackers.values()))


class HumanTracking:
    """The human_tracking analytic (see the module docstring and the parameters' schema)."""

    name = "human_tracking"
    version = "1.0.0"
    description = (
        "Detects faces, tracks them across frames (IoU association, ByteTrack-style) and reports "
        "each track's start, periodic updates and end, with the face's box, score and landmarks "
        "in source-frame pixels and, on request, its estimated age and gender; optionally tracks "
        "bodies from a person detector too."
    )
    roles: Mapping[str, str] = {
        "detector": "detector",
        "attributes": "face_attributes",
        "body_detector": "detector",
    }

    def parameters_schema(self) -> dict[str, Any]:
        # A copy: whoever renders or extends it must not change what validate uses.
        return copy.deepcopy(SCHEMA)

    def validate(self, parameters: Mapping[str, Any], path: str) -> dict[str, Any]:
        validated = validate(SCHEMA, parameters, path)
        check_roi(validated["roi"], json_path(path, ["roi"]))
        return validated

    def start(self, stream_id: str, parameters: Mapping[str, Any]) -> TrackingState:
        settings = Settings.parse(self.validate(parameters, "parameters"))
        trackers = {
            kind: Tracker(
                iou_threshold=settings.iou_threshold,
                min_hits=settings.min_hits,
                max_age=settings.max_age,
                high_score=settings.start_score_threshold,
            )
            for kind in settings.detectors
        }
        return TrackingState(stream_id, settings, trackers)

    async def process(self, frame: Frame, state: TrackingState, infer: InferFn) -> list[Event]:
        kinds = state.settings.detectors
        if len(kinds) == 1:
            answers = [await infer(_ROLES[kinds[0]], {"IMAGE": frame.pixels})]
        else:
            # Both detectors at once; nothing of the state is touched before both have answered.
            answers = list(
                await asyncio.gather(*(infer(_ROLES[kind], {"IMAGE": frame.pixels}) for kind in kinds))
            )
        events: list[Event] = []
        for kind, outputs in zip(kinds, answers, strict=True):
            events.extend(await self._track(kind, outputs, frame, state, infer))
        return events

    async def _track(
        self,
        kind: str,
        outputs: Mapping[str, np.ndarray[Any, Any]],
        frame: Frame,
        state: TrackingState,
        infer: InferFn,
    ) -> list[Event]:
        """One kind's detections of this frame through its tracker: that kind's events."""
        settings = state.settings
        tracker = state.trackers[kind]
        found = Detections.in_roi(outputs, frame, settings.score_threshold, settings.roi)
        rows, boxes, scores = found.rows, found.boxes, found.scores
        all_boxes = np.asarray(outputs["BOXES"], dtype=np.float32).reshape(-1, 4)  # normalised, for crops
        landmarks = self._landmarks(outputs, rows, frame) if kind == "face" else None

        change = tracker.update(boxes, scores)
        # Every track matched on this frame, tentative ones included: their attribute estimates
        # count towards the means reported once they are confirmed.
        seen = [track for track in tracker.tracks if track.detection is not None]
        for track in seen:
            index = track.detection
            assert index is not None
            info = state.tracks.get((kind, track.track_id))
            if info is None:
                info = state.tracks[(kind, track.track_id)] = TrackInfo(
                    str(uuid.uuid4()), {}, 0.0, None, frame.frame_number, frame.time_offset, kind=kind
                )
            info.rect = rect(boxes[index])
            info.score = round(float(scores[index]), 4)
            info.landmarks = landmarks[index] if landmarks is not None else None
            info.frame_number, info.time_offset = frame.frame_number, frame.time_offset
            if settings.best_shot and float(scores[index]) > info.best_score:
                crop = _crop(frame.image, all_boxes[rows[index]])
                if crop is not None:
                    info.best_shot, info.best_score = crop, float(scores[index])
        if settings.attributes and kind == "face" and seen:
            await self._estimate(frame, state, infer, all_boxes, rows, seen)
        # Tentative tracks dropped by the tracker leave no trace here either.
        live = {(kind, track.track_id) for track in tracker.tracks}

        events: list[Event] = []
        for track in change.ended:
            info = state.tracks.pop((kind, track.track_id))
            if "end" in settings.phases:
                events.append(self._event(state, info, "end"))
        for track in change.started:
            info = state.tracks[(kind, track.track_id)]
            self._emitted(info, frame)
            if "start" in settings.phases:
                events.append(self._event(state, info, "start"))
        for track in change.updated:
            info = state.tracks[(kind, track.track_id)]
            if "update" in settings.phases and self._update_due(info, frame, settings):
                self._emitted(info, frame)
                events.append(self._event(state, info, "update"))
        for key in [k for k in state.tracks if k[0] == kind and k not in live]:
            del state.tracks[key]
        return events

    def stop(self, state: TrackingState) -> list[Event]:
        infos = [
            state.tracks.pop((kind, track.track_id))
            for kind, tracker in state.trackers.items()
            for track in tracker.close()
        ]
        state.tracks.clear()
        if "end" not in state.settings.phases:
            return []
        return [self._event(state, info, "end") for info in infos]

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _landmarks(
        outputs: Mapping[str, np.ndarray[Any, Any]], rows: np.ndarray[Any, Any], frame: Frame
    ) -> list[list[list[int]]] | None:
        """Per kept row, five [x, y] points in source-frame pixels; None without a LANDMARKS output."""
        if "LANDMARKS" not in outputs:
            return None
        points = np.asarray(outputs["LANDMARKS"], dtype=np.float64).reshape(-1, 10)[rows].reshape(-1, 5, 2)
        width, height = frame.size
        points = points * np.array([width, height]) + np.array(frame.offset, dtype=np.float64)
        return [[[round(float(x)), round(float(y))] for x, y in face] for face in points]

    async def _estimate(
        self,
        frame: Frame,
        state: TrackingState,
        infer: InferFn,
        all_boxes: np.ndarray[Any, Any],
        rows: np.ndarray[Any, Any],
        seen: list[Track],
    ) -> None:
        """Age and gender of every face seen on this frame, in one call; added to the tracks' means."""
        wanted = np.zeros(len(all_boxes), dtype=bool)
        for track in seen:
            assert track.detection is not None
            wanted[rows[track.detection]] = True
        # The detector's K rows, unwanted ones zeroed: equal shapes across streams (see above).
        request = np.where(wanted[:, None], all_boxes, 0.0).astype(np.float32)
        outputs = await infer("attributes", {"IMAGE": frame.pixels, "BOXES": request})
        ages = np.asarray(outputs["AGE"], dtype=np.float64).reshape(-1)
        males = np.asarray(outputs["GENDER"], dtype=np.float64).reshape(-1)
        for track in seen:
            assert track.detection is not None
            row = int(rows[track.detection])
            info = state.tracks[("face", track.track_id)]
            info.age_sum += float(ages[row])
            info.male_sum += float(males[row])
            info.estimates += 1

    @staticmethod
    def _update_due(info: TrackInfo, frame: Frame, settings: Settings) -> bool:
        if settings.unit == "frame":
            elapsed = float(frame.frame_number - info.last_event_frame)
        else:
            elapsed = frame.time_offset - info.last_event_time
        # A negative elapsed time means the source started over: report at once.
        return elapsed < 0 or elapsed >= settings.update_interval - _TIME_EPSILON

    @staticmethod
    def _emitted(info: TrackInfo, frame: Frame) -> None:
        info.last_event_frame, info.last_event_time = frame.frame_number, frame.time_offset

    @staticmethod
    def _event(state: TrackingState, info: TrackInfo, phase: str) -> Event:
        age: float | None = None
        gender: str | None = None
        gender_score: float | None = None
        if state.settings.attributes and info.estimates:
            age = round(info.age_sum / info.estimates, 1)
            p_male = info.male_sum / info.estimates
            gender = _GENDER_LABELS[1] if p_male >= 0.5 else _GENDER_LABELS[0]
            gender_score = round(max(p_male, 1.0 - p_male), 4)
        event: Event = {
            "event_type": "human_tracking",
            "event_id": str(uuid.uuid4()),
            "stream_id": state.stream_id,
            "event_create_time": now_iso(),
            "track_id": info.uid,
            "phase": phase,
            "face_detection": (
                {"rect": dict(info.rect), "score": info.score, "landmarks": info.landmarks}
                if info.kind == "face"
                else None
            ),
            "age": age,
            "gender": gender,
            "gender_score": gender_score,
            "time_offset": info.time_offset,
            "frame_number": info.frame_number,
        }
        if info.kind == "body":
            event["body_detection"] = {"rect": dict(info.rect), "score": info.score}
        if state.settings.best_shot:
            shot = info.best_shot if phase != "update" else None
            # Stored and replaced by its URL by the worker (lva_core/images).
            event["best_shot"] = ImageRequest(shot, state.settings.image_policy) if shot is not None else None
        return event


def _crop(image: np.ndarray[Any, Any], box: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
    """A copy of ``box`` (x1, y1, x2, y2 normalised to ``image``) with a margin of ``_MARGIN``,
    clipped to the image; None when nothing of it is inside."""
    height, width = int(image.shape[0]), int(image.shape[1])
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = (x2 - x1) * _MARGIN, (y2 - y1) * _MARGIN
    left, right = max(0, round((x1 - dx) * width)), min(width, round((x2 + dx) * width))
    top, bottom = max(0, round((y1 - dy) * height)), min(height, round((y2 + dy) * height))
    if right <= left or bottom <= top:
        return None
    return image[top:bottom, left:right].copy()
