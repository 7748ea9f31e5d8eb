"""Frame geometry: rotated sizes, rectangles between rotated and source frames, ROIs in pixels."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lva_core.pipeline.source.spec import SourceSpec

Rect = tuple[int, int, int, int]  # x, y, width, height


def rotated_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    return (height, width) if rotation in (90, 270) else (width, height)


def rect_to_source(rect: Rect, rotation: int, width: int, height: int) -> Rect:
    """A rectangle of the rotated frame -> the same pixels in the source frame (width x height)."""
    x, y, w, h = rect
    if rotation == 90:
        return y, height - x - w, h, w
    if rotation == 180:
        return width - x - w, height - y - h, w, h
    if rotation == 270:
        return width - y - h, x, h, w
    return rect


def rect_to_rotated(rect: Rect, rotation: int, width: int, height: int) -> Rect:
    """The inverse of :func:`rect_to_source`."""
    x, y, w, h = rect
    if rotation == 90:
        return height - y - h, x, h, w
    if rotation == 180:
        return width - x - w, height - y - h, w, h
    if rotation == 270:
        return y, width - x - w, h, w
    return rect


def roi_to_pixels(
    roi: tuple[float, float, float, float], percent: bool, width: int, height: int
) -> tuple[float, float, float, float]:
    """An ROI (x, y, width, height) in pixels of a ``width`` x ``height`` frame, unclamped: a percent
    ROI is scaled to the frame. The one conversion, for the source's crop and the analytics' areas."""
    x, y, w, h = roi
    if percent:
        x, w = x * width / 100.0, w * width / 100.0
        y, h = y * height / 100.0, h * height / 100.0
    return x, y, w, h


def roi_rect(spec: SourceSpec, width: int, height: int) -> Rect | None:
    """The ROI in pixels of the rotated frame (width x height), clamped to it.

    The whole frame when there is no ROI; None when no pixel of the ROI lies in the frame.
    """
    if spec.roi is None:
        return 0, 0, width, height
    x, y, w, h = roi_to_pixels(spec.roi, spec.roi_mode == "percent", width, height)
    x0, y0 = max(0, min(width, round(x))), max(0, min(height, round(y)))
    x1, y1 = max(x0, min(width, round(x + w))), max(y0, min(height, round(y + h)))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return x0, y0, x1 - x0, y1 - y0
