"""people_counter's polygon zones through the real facade and core: bad polygons are a 400 with
LUNA's code 12027 and the field's path; good ones are kept as given and shown in the catalogue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lva_testkit.clips import clip
from lva_testkit.streams import assert_luna_error, create, delete, file_stream, get

SQUARE = [[10, 10], [90, 10], [90, 90], [10, 90]]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip(tmp_path_factory.mktemp("clips"))


def counter(parameters: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"analytic_name": "people_counter", "parameters": parameters}]


@pytest.mark.parametrize(
    ("parameters", "path", "words"),
    [
        (
            {"droi": [{"points": SQUARE}, {"points": [[0, 0], [5, 5]]}]},
            "analytics[0].parameters.droi[1].points",
            "a polygon needs at least 3 points",
        ),
        (
            {"roi": [{"points": [[0, 0], [10, 10], [10, 0], [0, 10]], "mode": "percent"}]},
            "analytics[0].parameters.roi[0].points",
            "edges cross",
        ),
        (
            {"droi": [{"points": [[0, 0], [150, 0], [50, 50]], "mode": "percent"}]},
            "analytics[0].parameters.droi[0].points[1][0]",
            "maximum of 100",
        ),
        (
            {"droi": [{"points": [[0, 0], ["ten", 0], [50, 50]]}]},
            "analytics[0].parameters.droi[0].points[1][0]",
            "not of type 'number'",
        ),
    ],
)
async def test_bad_polygons_are_a_400_12027_with_the_field(
    http: aiohttp.ClientSession,
    base_url: str,
    sample: Path,
    parameters: dict[str, Any],
    path: str,
    words: str,
) -> None:
    async with http.post(f"{base_url}/1/streams", json=file_stream(sample, counter(parameters))) as resp:
        answer = await resp.json()
        assert resp.status == 400, answer
    assert_luna_error(answer, 12027)
    assert answer["detail"].startswith(f"{path}: "), answer
    assert words in answer["detail"], answer
    assert answer["path"] == path, answer


async def test_polygons_are_kept_as_given_and_described(
    http: aiohttp.ClientSession, base_url: str, sample: Path
) -> None:
    parameters = {
        "roi": [{"points": SQUARE, "mode": "percent"}],
        "droi": [{"points": [[0, 0], [100, 0], [100, 100]], "exclude": True}],
        "anchor": "center",
    }
    stream_id = await create(http, base_url, file_stream(sample, counter(parameters), status="pause"))
    try:
        stream = await get(http, base_url, stream_id)
    finally:
        await delete(http, base_url, stream_id)
    (analytic,) = stream["analytics"]
    kept = analytic["parameters"]
    assert kept["roi"] == [{"points": SQUARE, "mode": "percent", "exclude": False}], kept
    assert kept["droi"] == [{"points": [[0, 0], [100, 0], [100, 100]], "mode": "abs", "exclude": True}], kept
    assert kept["anchor"] == "center"

    async with http.get(f"{base_url}/1/analytics") as resp:
        catalogue = await resp.json()
        assert resp.status == 200, catalogue
    (people_counter,) = [a for a in catalogue["analytics"] if a["name"] == "people_counter"]
    properties = people_counter["parameters_schema"]["properties"]
    assert {"roi", "droi", "anchor"} <= set(properties)
    assert properties["droi"]["items"]["properties"]["exclude"]["default"] is False
