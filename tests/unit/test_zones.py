"""people_counter's polygon zones: validation with field paths, the geometry, and the counting.

The geometry is checked against matplotlib's ``Path.contains_points`` (a dev dependency, an
independent implementation) on random polygons, and by hand on shapes whose inside is obvious.
The counting goes through ``PeopleCounter.process`` with the fake detector of test_analytics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from matplotlib.path import Path as MplPath

from lva_common.errors import BAD_JSON, LunaError
from lva_core.analytics.people_counter import PeopleCounter
from lva_core.analytics.zones import Zones, anchors, crossing_edges, in_polygon
from tests.unit.test_analytics import STREAM, FakeInfer, frame, person

PREFIX = "analytics[0].parameters"
TRIANGLE = [[0, 0], [10, 0], [10, 10]]
SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10]]


def polygon(points: Any, **extra: Any) -> dict[str, Any]:
    return {"points": points, **extra}


def error_of(parameters: Any) -> LunaError:
    with pytest.raises(LunaError) as info:
        PeopleCounter().validate(parameters, PREFIX)
    assert info.value.spec is BAD_JSON and info.value.code == 12027
    return info.value


# ------------------------------------------------------------------ validation


def test_polygons_are_accepted_with_defaults_filled() -> None:
    validated = PeopleCounter().validate(
        {
            "roi": [polygon(SQUARE, mode="percent")],
            "droi": [polygon(TRIANGLE), polygon(SQUARE, exclude=True)],
        },
        PREFIX,
    )
    assert validated["roi"] == [{"points": SQUARE, "mode": "percent", "exclude": False}]
    assert validated["droi"] == [
        {"points": TRIANGLE, "mode": "abs", "exclude": False},
        {"points": SQUARE, "mode": "abs", "exclude": True},
    ]
    assert validated["anchor"] == "bottom_center"
    # A closing copy of the first point and repeated points are allowed (and dropped).
    PeopleCounter().validate({"droi": [polygon([*TRIANGLE, [10, 10], [0, 0]])]}, PREFIX)
    # LUNA's rectangle roi still works beside a droi.
    PeopleCounter().validate(
        {"roi": {"x": 0, "y": 0, "width": 5, "height": 5}, "droi": [polygon(SQUARE)]}, PREFIX
    )


@pytest.mark.parametrize(
    ("parameters", "path", "words"),
    [
        ({"droi": [polygon(TRIANGLE), polygon([[0, 0], [1, 1]])]}, "droi[1].points", "at least 3 points"),
        ({"droi": [polygon([[0, 0], [0, 0], [5, 5], [0, 0]])]}, "droi[0].points", "at least 3 points"),
        ({"droi": [polygon([])]}, "droi[0].points", "at least 3 points"),
        ({"roi": [polygon([[0, 0], [1, 0]])]}, "roi[0].points", "at least 3 points"),
        ({"droi": [polygon([[0, 0], [10, 10], [10, 0], [0, 10]])]}, "droi[0].points", "edges cross"),
        (
            {"roi": [polygon(SQUARE), polygon([[0, 0], [4, 4], [4, 0], [0, 4]])]},
            "roi[1].points",
            "edges cross",
        ),
        # A spike: the path goes out to (20, 5) and straight back.
        ({"droi": [polygon([[0, 0], [10, 0], [20, 0], [10, 0], [5, 5]])]}, "droi[0].points", "edges cross"),
        ({"droi": [polygon([[0, 0], [5, 5], [10, 10]])]}, "droi[0].points", "no area"),
        (
            {"droi": [polygon([[0, 0], [101, 0], [10, 10]], mode="percent")]},
            "droi[0].points[1][0]",
            "maximum of 100",
        ),
        ({"droi": [polygon([[0, 0], [10, 0], [10, -1]])]}, "droi[0].points[2][1]", "minimum of 0"),
        ({"droi": [polygon([[0, 0], [10, "0"], [10, 10]])]}, "droi[0].points[1][1]", "not of type 'number'"),
        ({"droi": [polygon([[0, 0], [10, 0, 3], [10, 10]])]}, "droi[0].points[1]", "too long"),
        ({"droi": [polygon([[0, 0], [10], [10, 10]])]}, "droi[0].points[1]", "too short"),
        ({"droi": [polygon({"x": 0, "y": 0})]}, "droi[0].points", "not of type 'array'"),
        ({"droi": [TRIANGLE]}, "droi[0]", "not of type 'object'"),
        ({"droi": polygon(TRIANGLE)}, "droi", "not of type 'array'"),
        ({"droi": []}, "droi", "non-empty"),
        ({"droi": [polygon(TRIANGLE)] * 17}, "droi", "too long"),
        ({"droi": [polygon([[i, i * i] for i in range(102)])]}, "droi[0].points", "too long"),
        ({"droi": [polygon(TRIANGLE, mode="px")]}, "droi[0].mode", "is not one of"),
        ({"droi": [polygon(TRIANGLE, exclude="yes")]}, "droi[0].exclude", "not of type 'boolean'"),
        ({"droi": [polygon(TRIANGLE, name="door")]}, "droi[0].name", "unknown parameter"),
        ({"droi": [{"mode": "abs"}]}, "droi[0].points", "required"),
        ({"anchor": "feet"}, "anchor", "is not one of"),
        ({"roi": "everywhere"}, "roi", "is not of type"),
        ({"droi": [polygon([[0, 0], [10, 0], [10, float("nan")]])]}, "droi[0].points[2][1]", "finite"),
    ],
)
def test_bad_polygons_are_refused_with_their_field_path(parameters: Any, path: str, words: str) -> None:
    error = error_of(parameters)
    assert error.detail.startswith(f"{PREFIX}.{path}: "), error.detail
    assert words in error.detail, error.detail
    assert error.extra == {"path": f"{PREFIX}.{path}"}


def test_the_crossing_edges_are_named() -> None:
    error = error_of({"droi": [polygon([[0, 0], [10, 0], [0, 10], [10, 10]])]})
    assert "points 1-2 and 3-0" in error.detail, error.detail


# ------------------------------------------------------------------ geometry


def points(*xy: tuple[float, float]) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.array(xy, dtype=np.float64).reshape(-1, 2)


def test_a_square_is_closed_and_its_outside_is_out() -> None:
    square = points(*[(x, y) for x, y in SQUARE])
    probe = points(
        (5, 5), (0, 0), (10, 10), (0, 5), (10, 5), (5, 10), (5, 0), (-0.01, 5), (10.01, 5), (5, 11)
    )
    assert in_polygon(probe, square).tolist() == [True] * 7 + [False] * 3


def test_a_concave_polygon_excludes_its_notch() -> None:
    # A "U": the notch between the arms, x 4..6 above y 4, is outside.
    u_shape = points((0, 0), (10, 0), (10, 10), (6, 10), (6, 4), (4, 4), (4, 10), (0, 10))
    probe = points((2, 8), (8, 8), (5, 2), (5, 8), (5, 4), (5, 4.01), (4, 7))
    assert in_polygon(probe, u_shape).tolist() == [True, True, True, False, True, False, True]


def test_a_ray_through_a_vertex_counts_once() -> None:
    diamond = points((5, 0), (10, 5), (5, 10), (0, 5))
    # y = 5 passes through the vertices (0, 5) and (10, 5); y = 0 grazes the top vertex.
    probe = points((5, 5), (-1, 5), (11, 5), (1, 0), (5, 0), (9, 0))
    assert in_polygon(probe, diamond).tolist() == [True, False, False, False, True, False]


def test_random_polygons_agree_with_matplotlib() -> None:
    rng = np.random.default_rng(15)
    checked = 0
    for _ in range(200):
        # A star-shaped polygon: random radii at increasing angles, never more than half a turn
        # apart, never cross.
        n = int(rng.integers(5, 40))
        angles = (np.arange(n) + rng.uniform(0, 0.9, n)) * 2 * np.pi / n
        radii = rng.uniform(5, 100, n)
        vertices = np.stack([500 + radii * np.cos(angles), 400 + radii * np.sin(angles)], axis=1)
        assert crossing_edges(vertices) is None
        probe = rng.uniform(380, 620, (500, 2))
        path = MplPath(np.vstack([vertices, vertices[:1]]), closed=True)
        # Away from the boundary both must agree exactly; matplotlib's own edge handling differs.
        clear = (
            np.abs(path.contains_points(probe, radius=1e-3) ^ path.contains_points(probe, radius=-1e-3)) == 0
        )
        ours = in_polygon(probe[clear], vertices)
        assert (ours == path.contains_points(probe[clear])).all()
        checked += int(clear.sum())
    assert checked > 90_000


def test_crossing_edges_finds_bow_ties_and_passes_simple_polygons() -> None:
    assert crossing_edges(points(*[(x, y) for x, y in SQUARE])) is None
    assert crossing_edges(points((0, 0), (10, 0), (5, 5))) is None
    assert crossing_edges(points((0, 0), (10, 10), (10, 0), (0, 10))) == (0, 2)
    # Touching without crossing: a vertex lying on a non-neighbouring edge.
    assert crossing_edges(points((0, 0), (10, 0), (10, 10), (5, 0), (0, 10))) is not None


def test_anchors_are_the_bottom_centre_or_the_centre_of_the_box() -> None:
    boxes = np.array([[10, 20, 30, 60], [0, 0, 4, 4]], dtype=np.float64)
    assert anchors(boxes, "bottom_center").tolist() == [[20, 60], [2, 4]]
    assert anchors(boxes, "center").tolist() == [[20, 40], [2, 2]]


def test_zones_include_any_and_exclude_every() -> None:
    zones = Zones.parse(
        [
            {"points": [[0, 0], [50, 0], [50, 100], [0, 100]], "mode": "percent"},  # the left half
            {"points": [[300, 0], [400, 0], [400, 300], [300, 300]]},  # x 300..400 in pixels
            {"points": [[0, 0], [100, 0], [100, 100], [0, 100]], "exclude": True},  # a corner out
        ]
    )
    probe = points((150, 150), (50, 50), (250, 150), (350, 150))
    assert zones.passes(probe, (400, 300)).tolist() == [True, False, False, True]
    # Only exclusions: everything else passes.
    only_out = Zones.parse([{"points": [[0, 0], [100, 0], [100, 100], [0, 100]], "exclude": True}])
    assert only_out.passes(probe, (400, 300)).tolist() == [True, False, True, True]


# ------------------------------------------------------------------ counting


async def count(parameters: dict[str, Any], people: list[Any], **frame_args: Any) -> dict[str, Any]:
    counter = PeopleCounter()
    base: dict[str, Any] = {
        "rate": {"period": 1, "unit": "frame"},
        "probe_count": 1,
        "people_count_threshold": 0,
        "event_policy": {"trigger": "period", "interval": 0.01},
    }
    state = counter.start(STREAM, {**base, **parameters})
    (event,) = await counter.process(frame(0, **frame_args), state, FakeInfer([people]))
    return event


async def test_only_people_standing_in_the_roi_polygons_are_counted_and_listed() -> None:
    # 400x300 frame; boxes 40 wide, 120 high around centre y 150: feet at y 210.
    people = [person(0.2), person(0.5), person(0.8)]  # centres x 80, 200, 320
    floor = [{"points": [[0, 200], [250, 200], [250, 300], [0, 300]]}]  # feet of the first two
    event = await count({"roi": floor}, people)
    assert event["people_count"] == 2
    assert [c for c in event["overview"]["people_coordinates"]] == [[80, 150], [200, 150]]  # box centres
    assert [d["rect"]["x"] for d in event["detections"]] == [60, 180]

    # The same zone with the centre as anchor: the box centres (y 150) are above it.
    event = await count({"roi": floor, "anchor": "center"}, people)
    assert (
        event["people_count"] == 0
        and event["detections"] == []
        and event["overview"]["people_coordinates"] == []
    )


async def test_droi_filters_and_its_exclude_polygons_take_people_out() -> None:
    people = [person(0.2), person(0.5), person(0.8)]
    left = {"points": [[0, 0], [60, 0], [60, 100], [0, 100]], "mode": "percent"}  # x < 240
    assert (await count({"droi": [left]}, people))["people_count"] == 2
    over_second = {"points": [[150, 0], [250, 0], [250, 300], [150, 300]], "exclude": True}
    event = await count({"droi": [left, over_second]}, people)
    assert event["people_count"] == 1 and event["overview"]["people_coordinates"] == [[80, 150]]
    # An exclusion alone counts everyone else.
    assert (await count({"droi": [over_second]}, people))["people_count"] == 2
    # roi and droi both filter: LUNA's rectangle roi (box centre) and a polygon droi.
    right = {"x": 150, "y": 0, "width": 250, "height": 300}
    assert (await count({"roi": right, "droi": [left]}, people))["people_count"] == 1


async def test_zones_are_in_source_pixels_under_a_stream_roi() -> None:
    # The stream's roi crops the right half (offset 200) of a 400x300 source; normalised x 0.5
    # is source x 300, and percent is of the source frame, not of the crop.
    people = [person(0.25), person(0.75)]  # source x 250 and 350
    crop = {"size": (200, 300), "source_size": (400, 300), "offset": (200, 0)}
    right_quarter = {"points": [[75, 0], [100, 0], [100, 100], [75, 100]], "mode": "percent"}  # x >= 300
    event = await count({"droi": [right_quarter]}, people, **crop)
    assert event["people_count"] == 1 and event["overview"]["people_coordinates"] == [[350, 150]]
    pixels = {"points": [[200, 0], [300, 0], [300, 300], [200, 300]]}
    event = await count({"droi": [pixels]}, people, **crop)
    assert event["overview"]["people_coordinates"] == [[250, 150]]


async def test_a_person_whose_feet_touch_the_frame_edge_is_in_a_whole_frame_zone() -> None:
    # A box reaching the bottom edge: its anchor lies on the polygon's edge, which is inside.
    whole = {"points": [[0, 0], [100, 0], [100, 100], [0, 100]], "mode": "percent"}
    event = await count({"droi": [whole]}, [((0.4, 0.5, 0.6, 1.0), 0.9)])
    assert event["people_count"] == 1
