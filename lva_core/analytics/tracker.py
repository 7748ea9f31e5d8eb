"""A small multi-object tracker in numpy: greedy IoU association in two stages, ByteTrack-style.

Detections arrive as boxes ``[N, 4]`` (x1, y1, x2, y2, any consistent unit: the analytics use
source-frame pixels) with scores ``[N]``. Each ``update`` is one analysed frame:

1. every live track predicts where its box is now (constant velocity, from its last two
   matches), so that objects that move or cross each other keep their identities;
2. **high-score** detections (score >= ``high_score``) are matched to all live tracks, best IoU
   first (greedy), pairs below ``iou_threshold`` never match;
3. **low-score** detections are matched to the confirmed tracks still unmatched, with the stricter
   ``low_iou_threshold``: a weak, partly occluded or blurred detection continues a track that
   exists but never starts one (ByteTrack's insight, without its Kalman filter);
4. unmatched high-score detections start **tentative** tracks. A tentative track becomes
   **confirmed** after ``min_hits`` consecutive matches; one miss before that deletes it
   silently (it was most likely a false detection). A confirmed track survives up to ``max_age``
   consecutive missed frames and **ends** on the next miss.

Greedy rather than optimal (Hungarian) assignment: scipy is not in the application environment,
and with few objects per frame and IoU gating the two rarely differ. Track ids are integers
from a per-tracker counter and are never reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


def iou_matrix(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """IoU of every box of ``a`` ``[n, 4]`` with every box of ``b`` ``[m, 4]``: ``[n, m]``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    result: FloatArray = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return result


def greedy_match(iou: FloatArray, threshold: float) -> list[tuple[int, int]]:
    """(row, column) pairs, highest IoU first, each row and column used once, IoU >= threshold."""
    if iou.size == 0:
        return []
    rows, cols = np.nonzero(iou >= threshold)
    # Stable sort on -IoU: equal IoUs resolve by (row, column) order, so results are reproducible.
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for index in order:
        row, col = int(rows[index]), int(cols[index])
        if row not in used_rows and col not in used_cols:
            used_rows.add(row)
            used_cols.add(col)
            pairs.append((row, col))
    return pairs


@dataclass
class Track:
    """One tracked object. ``box`` and ``score`` are those of its latest matched detection."""

    track_id: int
    box: FloatArray
    score: float
    hits: int = 1  # consecutive matches while tentative; total matches once confirmed
    missed: int = 0  # consecutive updates without a match
    confirmed: bool = False
    # Index of the detection matched in the latest update, None when it was missed then.
    detection: int | None = None
    velocity: FloatArray = field(default_factory=lambda: np.zeros(4))

    def predicted(self) -> FloatArray:
        """Where the box should be on the coming frame, assuming the motion goes on."""
        result: FloatArray = self.box + self.velocity * (self.missed + 1)
        return result


@dataclass
class TrackerUpdate:
    """What one frame changed: tracks confirmed now, confirmed tracks matched again, tracks ended."""

    started: list[Track]
    updated: list[Track]
    ended: list[Track]


class Tracker:
    def __init__(
        self,
        *,
        iou_threshold: float = 0.3,
        min_hits: int = 2,
        max_age: int = 5,
        high_score: float = 0.0,
        low_iou_threshold: float | None = None,
        velocity_smoothing: float = 0.5,
    ) -> None:
        if min_hits < 1 or max_age < 0 or not 0 <= iou_threshold <= 1:
            raise ValueError("min_hits >= 1, max_age >= 0 and 0 <= iou_threshold <= 1")
        self.iou_threshold = iou_threshold
        # ByteTrack matches its second, low-score stage at IoU 0.5: a weak detection must
        # overlap a track well to be trusted as its continuation.
        self.low_iou_threshold = max(iou_threshold, 0.5) if low_iou_threshold is None else low_iou_threshold
        self.min_hits = min_hits
        self.max_age = max_age
        self.high_score = high_score
        self.velocity_smoothing = velocity_smoothing
        self.tracks: list[Track] = []
        self._next_id = 1

    @property
    def confirmed(self) -> list[Track]:
        return [track for track in self.tracks if track.confirmed]

    def _new_track(self, box: FloatArray, score: float, detection: int) -> Track:
        track = Track(self._next_id, box.copy(), score, detection=detection)
        self._next_id += 1
        return track

    def _match(
        self, tracks: list[Track], boxes: FloatArray, candidates: list[int], threshold: float
    ) -> list[tuple[Track, int]]:
        if not tracks or not candidates:
            return []
        predicted = np.stack([track.predicted() for track in tracks])
        iou = iou_matrix(predicted, boxes[candidates])
        return [(tracks[row], candidates[col]) for row, col in greedy_match(iou, threshold)]

    def update(self, boxes: npt.ArrayLike, scores: npt.ArrayLike) -> TrackerUpdate:
        """Advance by one analysed frame with its detections; what changed."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
        high = [i for i in range(len(scores)) if scores[i] >= self.high_score]
        low = [i for i in range(len(scores)) if scores[i] < self.high_score]

        first = self._match(self.tracks, boxes, high, self.iou_threshold)
        matched_tracks = {id(track) for track, _ in first}
        leftover = [t for t in self.tracks if t.confirmed and id(t) not in matched_tracks]
        second = self._match(leftover, boxes, low, self.low_iou_threshold)
        used = {index for _, index in first} | {index for _, index in second}

        started: list[Track] = []
        updated: list[Track] = []
        for track, index in [*first, *second]:
            box = boxes[index]
            # The box moved by (box - track.box) over (missed + 1) frames; smoothed, so that
            # one jittery detection does not throw the next prediction off.
            step = (box - track.box) / (track.missed + 1)
            a = self.velocity_smoothing
            track.velocity = step if track.hits == 1 else a * step + (1 - a) * track.velocity
            track.box = box.copy()
            track.score = float(scores[index])
            track.missed = 0
            track.detection = index
            track.hits += 1
            if not track.confirmed and track.hits >= self.min_hits:
                track.confirmed = True
                started.append(track)
            elif track.confirmed:
                updated.append(track)

        matched = {id(track) for track, _ in [*first, *second]}
        ended: list[Track] = []
        survivors: list[Track] = []
        for track in self.tracks:
            if id(track) in matched:
                survivors.append(track)
                continue
            track.detection = None
            track.missed += 1
            if not track.confirmed:
                continue  # a tentative track that misses is dropped without a trace
            if track.missed > self.max_age:
                ended.append(track)
            else:
                survivors.append(track)

        for index in high:
            if index in used:
                continue
            track = self._new_track(boxes[index], float(scores[index]), index)
            if self.min_hits <= 1:
                track.confirmed = True
                started.append(track)
            survivors.append(track)
        self.tracks = survivors
        return TrackerUpdate(started, updated, ended)

    def close(self) -> list[Track]:
        """End every confirmed track (the stream stops); the tracker is empty afterwards."""
        ended = self.confirmed
        self.tracks = []
        return ended
