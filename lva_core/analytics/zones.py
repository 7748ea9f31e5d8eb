"""Polygon zones of ``people_counter``: their parameters, their checks and the point-in-polygon test.

A zone is a polygon of the source frame (pixels after the stream's rotation and before the
stream's own roi crop, like every coordinate the analytics take and give), in absolute pixels
or in percent of the source frame's width and height::

    {"points": [[x, y], [x, y], [x, y], ...], "mode": "abs" | "percent", "exclude": false}

``people_counter`` takes a list of them as ``droi`` (LUNA's name: the polygons a person must
stand in to be counted) and, instead of LUNA's rectangle, as ``roi``. A list passes a point when
it lies in one of the list's polygons (any, if the list has only ``exclude`` ones) and in none of
its ``exclude`` polygons. Polygons are closed: a point on an edge is inside.

The test is plain numpy (docs/decisions.md, "Zones"): even-odd ray casting of every anchor
against every edge at once, plus an on-edge test so that the boundary belongs to the polygon.
The checks a schema cannot express run once, when a stream is created: at least 3 distinct
points, a non-zero area, and edges that do not cross or touch except where neighbours meet (a
"bow tie" has no agreed inside; it is nearly always corners clicked in the wrong order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lva_common.errors import invalid
from lva_core.analytics.validation import json_path

MAX_POLYGONS = 16
MAX_POINTS = 100
ANCHORS = ("bottom_center", "center")

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]


def polygon_schema() -> dict[str, Any]:
    """One polygon: its points, the unit of its coordinates, and whether it excludes."""
    number = {"type": "number", "minimum": 0}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["points"],
        "properties": {
            "points": {
                "type": "array",
                "description": (
                    f"The vertices [x, y] in order around the polygon (3 to {MAX_POINTS} distinct "
                    "points; the last is joined to the first, and repeating the first point at the "
                    "end is allowed). Edges may not cross."
                ),
                "items": {
                    "type": "array",
                    "prefixItems": [number, number],
                    "minItems": 2,
                    "maxItems": 2,
                },
                "maxItems": MAX_POINTS + 1,
            },
            "mode": {
                "enum": ["abs", "percent"],
                "default": "abs",
                "description": "abs: pixels of the source frame; percent: percent (0-100) of its size.",
            },
            "exclude": {
                "type": "boolean",
                "default": False,
                "description": "true: people standing in it are not counted, wherever else they stand.",
            },
        },
        "if": {"type": "object", "properties": {"mode": {"const": "percent"}}},
        "then": {
            "properties": {
                "points": {
                    "items": {"prefixItems": [{"maximum": 100}, {"maximum": 100}]},
                }
            }
        },
    }


def polygons_schema(what: str) -> dict[str, Any]:
    """A list of polygons (``droi``, or the polygon form of ``roi``); ``what`` says what it selects."""
    return {
        "type": "array",
        "description": (
            f"Polygons of the source frame (after the stream's rotation, before the stream's own roi "
            f"crop): {what} A person stands where the anchor point of its box (parameter anchor) "
            "is; a point on an edge is inside. A person is counted when it stands in one of the "
            "polygons (any, if all of them are exclude ones) and in none of the exclude ones. "
            f"1 to {MAX_POLYGONS} polygons."
        ),
        "items": polygon_schema(),
        "minItems": 1,
        "maxItems": MAX_POLYGONS,
    }


def anchor_schema() -> dict[str, Any]:
    return {
        "enum": list(ANCHORS),
        "default": "bottom_center",
        "description": (
            "Which point of a person's box decides whether it stands in a polygon of roi or droi: "
            "bottom_center, the middle of its bottom edge (the feet: where a person stands on the "
            "floor, as Roboflow supervision's PolygonZone and Frigate's zones decide), or center, "
            "the box centre. LUNA's rectangle roi always uses the box centre."
        ),
    }


# ---------------------------------------------------------------- checks beyond the schema


def _distinct(points: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """The polygon's vertices without consecutive repeats and without a closing copy of the first."""
    kept: list[tuple[float, float]] = []
    for x, y in points:
        point = (float(x), float(y))
        if not kept or point != kept[-1]:
            kept.append(point)
    while len(kept) > 1 and kept[-1] == kept[0]:
        kept.pop()
    return kept


def _orientation(a: FloatArray, b: FloatArray, c: FloatArray) -> FloatArray:
    """The sign of the turn a -> b -> c (cross product), per row: > 0 left, < 0 right, 0 straight."""
    result: FloatArray = np.sign(
        (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
    )
    return result


def _on_segment(a: FloatArray, b: FloatArray, c: FloatArray) -> BoolArray:
    """Whether c, known collinear with a-b, lies within the segment's bounding box."""
    result: BoolArray = (
        (np.minimum(a[..., 0], b[..., 0]) <= c[..., 0])
        & (c[..., 0] <= np.maximum(a[..., 0], b[..., 0]))
        & (np.minimum(a[..., 1], b[..., 1]) <= c[..., 1])
        & (c[..., 1] <= np.maximum(a[..., 1], b[..., 1]))
    )
    return result


def crossing_edges(points: FloatArray) -> tuple[int, int] | None:
    """The first pair of edges (i, j) that cross or touch other than at a shared vertex, if any.

    Edge i joins points[i] to points[i + 1] (the last one to points[0]). Neighbouring edges share
    a vertex; they are only wrong when they fold back onto each other (a spike).
    """
    n = len(points)
    starts, ends = points, np.roll(points, -1, axis=0)
    # Neighbours: edge i and i + 1 fold back when collinear and pointing against each other.
    turn = _orientation(starts, ends, np.roll(ends, -1, axis=0))
    d1, d2 = ends - starts, np.roll(ends, -1, axis=0) - ends
    folded = (turn == 0) & ((d1 * d2).sum(axis=1) < 0)
    if folded.any():
        first = int(np.argmax(folded))
        return first, (first + 1) % n
    i, j = np.triu_indices(n, k=2)
    apart = ~((i == 0) & (j == n - 1))  # the first and last edges are neighbours too
    i, j = i[apart], j[apart]
    a, b, c, d = starts[i], ends[i], starts[j], ends[j]
    o1, o2 = _orientation(a, b, c), _orientation(a, b, d)
    o3, o4 = _orientation(c, d, a), _orientation(c, d, b)
    meet = ((o1 * o2 < 0) & (o3 * o4 < 0)) | (
        ((o1 == 0) & _on_segment(a, b, c))
        | ((o2 == 0) & _on_segment(a, b, d))
        | ((o3 == 0) & _on_segment(c, d, a))
        | ((o4 == 0) & _on_segment(c, d, b))
    )
    if not meet.any():
        return None
    k = int(np.argmax(meet))
    return int(i[k]), int(j[k])


def area(points: FloatArray) -> float:
    """The polygon's area (shoelace formula), in the square of its coordinates' unit."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def check_polygons(polygons: Sequence[Mapping[str, Any]] | None, path: str) -> None:
    """The checks of validated polygons that their schema cannot express; ``path`` is the list's."""
    if polygons is None:
        return
    for index, polygon in enumerate(polygons):
        where = json_path(path, [index, "points"])
        points = _distinct(polygon["points"])
        if len(points) < 3:
            raise invalid(where, f"a polygon needs at least 3 points (got {len(points)} distinct)")
        if len(points) > MAX_POINTS:
            raise invalid(where, f"a polygon has at most {MAX_POINTS} points (got {len(points)})")
        vertices = np.array(points, dtype=np.float64)
        if np.linalg.matrix_rank(vertices - vertices[0]) < 2:
            raise invalid(where, "the polygon has no area (its points lie on one line)")
        crossed = crossing_edges(vertices)
        if crossed is not None:
            i, j = crossed
            n = len(points)
            raise invalid(
                where,
                f"the polygon's edges cross (points {i}-{(i + 1) % n} and {j}-{(j + 1) % n}): list "
                "its points in order around it",
            )
        if area(vertices) == 0:
            raise invalid(where, "the polygon has no area (its points lie on one line)")


# ---------------------------------------------------------------- the test itself


def in_polygon(points: FloatArray, polygon: FloatArray) -> BoolArray:
    """Which of ``points`` ``[m, 2]`` lie in the closed ``polygon`` ``[n, 2]`` (edges included).

    Even-odd ray casting: a point is inside when a ray from it towards +x crosses an odd number
    of edges; an edge counts when it straddles the point's y, half-open (y1 <= y < y2 either
    way) so that a vertex on the ray is counted once. Points on an edge are inside.
    """
    px, py = points[:, 0:1], points[:, 1:2]  # [m, 1] against the edges' [n]
    x1, y1 = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    straddles = (y1 > py) != (y2 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_x = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
    odd: BoolArray = (np.count_nonzero(straddles & (px < cross_x), axis=1) % 2) == 1
    # On an edge: collinear with it (cross product 0, up to rounding) and within its extent.
    dx, dy = x2 - x1, y2 - y1
    cross = (px - x1) * dy - (py - y1) * dx
    tolerance = 1e-9 * np.maximum(1.0, np.hypot(dx, dy)) * np.maximum(1.0, np.abs(px) + np.abs(py))
    within = (
        (np.minimum(x1, x2) <= px)
        & (px <= np.maximum(x1, x2))
        & (np.minimum(y1, y2) <= py)
        & (py <= np.maximum(y1, y2))
    )
    on_edge: BoolArray = ((np.abs(cross) <= tolerance) & within).any(axis=1)
    result: BoolArray = odd | on_edge
    return result


def anchors(boxes: FloatArray, anchor: str) -> FloatArray:
    """The anchor point of each box ``[n, 4]`` (x1, y1, x2, y2) as ``[n, 2]``."""
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    y = boxes[:, 3] if anchor == "bottom_center" else (boxes[:, 1] + boxes[:, 3]) / 2
    result: FloatArray = np.stack([x, y], axis=1)
    return result


@dataclass(frozen=True)
class Zone:
    """One validated polygon, its vertices in its own unit (pixels or percent)."""

    vertices: FloatArray
    percent: bool
    exclude: bool

    @classmethod
    def parse(cls, polygon: Mapping[str, Any]) -> Zone:
        points = _distinct(polygon["points"])
        return cls(
            np.array(points, dtype=np.float64),
            polygon.get("mode") == "percent",
            bool(polygon.get("exclude", False)),
        )

    def in_pixels(self, source_size: tuple[int, int]) -> FloatArray:
        """The vertices in pixels of a source frame of ``source_size`` (width, height)."""
        if not self.percent:
            return self.vertices
        width, height = source_size
        result: FloatArray = self.vertices * np.array([width / 100.0, height / 100.0])
        return result


@dataclass(frozen=True)
class Zones:
    """A list of polygons (``roi`` or ``droi``) as one filter of points."""

    zones: tuple[Zone, ...]

    @classmethod
    def parse(cls, polygons: Sequence[Mapping[str, Any]]) -> Zones:
        return cls(tuple(Zone.parse(polygon) for polygon in polygons))

    def passes(self, points: FloatArray, source_size: tuple[int, int]) -> BoolArray:
        """Which of ``points`` ``[m, 2]`` (source pixels) stand in the zones and in no excluded one."""
        include = [zone for zone in self.zones if not zone.exclude]
        passed = np.zeros(len(points), dtype=bool) if include else np.ones(len(points), dtype=bool)
        for zone in include:
            passed |= in_polygon(points, zone.in_pixels(source_size))
        for zone in self.zones:
            if zone.exclude:
                passed &= ~in_polygon(points, zone.in_pixels(source_size))
        return passed
