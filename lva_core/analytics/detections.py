"""The detector contract, in code: what every model in the ``detector`` role returns, and the
helpers both detector-based analytics (people_counter, human_tracking) use to read it.

A detector (docs/triton.md, "The detector contract") takes ``IMAGE`` uint8 ``[H, W, 3]`` RGB and
returns, per image, ``BOXES`` ``[N, 4]`` (x1, y1, x2, y2 normalised to the image), ``SCORES``
``[N]`` and ``COUNT`` ``[1]``: the first COUNT rows are valid. Extra outputs (a face detector's
``LANDMARKS``) are read by row through :attr:`Detections.rows`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from lva_core.pipeline.frame import Frame
from lva_core.pipeline.geometry import roi_to_pixels

OUTPUTS = ("BOXES", "SCORES", "COUNT")


def now_iso() -> str:
    """The current time in ISO 8601, UTC (``2024-05-01T12:00:00.123456+00:00``)."""
    return datetime.now(UTC).isoformat()


def to_source_pixels(boxes: np.ndarray[Any, Any], frame: Frame) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Boxes ``[n, 4]`` normalised to ``frame.image`` -> x1, y1, x2, y2 in source-frame pixels."""
    width, height = frame.size
    dx, dy = frame.offset
    scale = np.array([width, height, width, height], dtype=np.float64)
    shift = np.array([dx, dy, dx, dy], dtype=np.float64)
    result: np.ndarray[Any, np.dtype[np.float64]] = (
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale + shift
    )
    return result


def rect(box: np.ndarray[Any, Any]) -> dict[str, int]:
    """x1, y1, x2, y2 (pixels) -> LUNA's ``{"x", "y", "width", "height"}`` in whole pixels.

    The corners are rounded, then the size taken between them, so that adjacent boxes stay
    adjacent instead of each side rounding on its own.
    """
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    return {"x": x1, "y": y1, "width": x2 - x1, "height": y2 - y1}


def valid_rows(outputs: Mapping[str, np.ndarray[Any, Any]], score_threshold: float) -> np.ndarray[Any, Any]:
    """Indices of a detector's valid rows (the contract: the first COUNT rows) worth keeping.

    Rows with no area or scoring below ``score_threshold`` are skipped.
    """
    boxes = np.asarray(outputs["BOXES"]).reshape(-1, 4)
    scores = np.asarray(outputs["SCORES"]).reshape(-1)
    count = min(int(np.asarray(outputs["COUNT"]).reshape(-1)[0]), len(boxes), len(scores))
    rows = np.arange(count)
    keep = (
        (boxes[:count, 2] > boxes[:count, 0])
        & (boxes[:count, 3] > boxes[:count, 1])
        & (scores[:count] >= score_threshold)
    )
    return rows[keep]


def inside(centres: np.ndarray[Any, Any], area: tuple[float, float, float, float]) -> np.ndarray[Any, Any]:
    """Which of the points ``[n, 2]`` lie in the half-open rectangle (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = area
    return (centres[:, 0] >= x1) & (centres[:, 0] < x2) & (centres[:, 1] >= y1) & (centres[:, 1] < y2)


def roi_bounds(
    roi: Mapping[str, Any] | None, source_size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """A validated ``roi`` parameter as (x1, y1, x2, y2) in source-frame pixels; the whole frame
    when None.

    An absolute roi that reaches past the frame is clipped to it: the source's size is only known
    once it is decoded, long after the parameters were accepted.
    """
    width, height = source_size
    if roi is None:
        return 0.0, 0.0, float(width), float(height)
    area = (float(roi["x"]), float(roi["y"]), float(roi["width"]), float(roi["height"]))
    x, y, w, h = roi_to_pixels(area, roi.get("mode") == "percent", width, height)
    return max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)


@dataclass(frozen=True)
class Detections:
    """A detector's valid, kept detections of one frame, in source-frame pixels."""

    rows: np.ndarray[Any, Any]  # the detections' rows in the model's outputs
    boxes: np.ndarray[Any, np.dtype[np.float64]]  # [n, 4] x1, y1, x2, y2
    scores: np.ndarray[Any, Any]  # [n]
    centres: np.ndarray[Any, np.dtype[np.float64]]  # [n, 2] box centres

    @classmethod
    def in_roi(
        cls,
        outputs: Mapping[str, np.ndarray[Any, Any]],
        frame: Frame,
        score_threshold: float,
        roi: Mapping[str, Any] | None,
    ) -> Detections:
        """The valid rows scoring at least ``score_threshold`` whose box centre lies in ``roi``."""
        rows = valid_rows(outputs, score_threshold)
        boxes = to_source_pixels(np.asarray(outputs["BOXES"]).reshape(-1, 4)[rows], frame)
        centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
        keep = inside(centres, roi_bounds(roi, frame.source_size))
        rows = rows[keep]
        scores = np.asarray(outputs["SCORES"]).reshape(-1)[rows]
        return cls(rows, boxes[keep], scores, centres[keep])
