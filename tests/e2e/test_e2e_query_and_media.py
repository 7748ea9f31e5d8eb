"""Small promises of the REST surface: strict query values, declared ranges, YAML media types,
stable key order, and one version per analytic."""

from __future__ import annotations

import json

import aiohttp
import pytest
import yaml

from lva_testkit.streams import assert_luna_error


@pytest.mark.parametrize(
    "query",
    [
        "page=1&page=2",  # one value or the other would be a guess
        "status=pause&status=pending",
        "page=%D9%A3",  # ٣, an Arabic-Indic three: a digit to int(), not to a query string
        "page=1_0",
        "page=%201",
        "page=0x10",
        "page_size=" + "9" * 5000,
    ],
)
async def test_query_values_are_read_strictly(http: aiohttp.ClientSession, base_url: str, query: str) -> None:
    async with http.get(f"{base_url}/1/streams?{query}") as resp:
        assert resp.status == 400, (query, await resp.text())
        assert_luna_error(await resp.json(), 12012)


async def test_a_repeated_parameter_names_itself(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/1/streams?page=1&page=2") as resp:
        detail = (await resp.json())["detail"]
    assert "'page' is given 2 times" in detail


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("page=-1", "page: must be between 0 and 2147483647"),
        ("page_size=-5", "page_size: must be between 0 and 2147483647"),
        ("page=2147483648", "page: must be between 0 and 2147483647"),
    ],
)
async def test_ranges_quote_what_is_accepted(
    http: aiohttp.ClientSession, base_url: str, query: str, expected: str
) -> None:
    # The int32 range was quoted (from -2147483648), and then a negative page was refused anyway.
    async with http.get(f"{base_url}/1/streams?{query}") as resp:
        assert resp.status == 400
        payload = await resp.json()
    assert_luna_error(payload, 12012)
    assert payload["detail"] == expected


async def test_a_body_range_is_quoted_with_its_path(http: aiohttp.ClientSession, base_url: str) -> None:
    body = {"data": {"reference": "rtsp://127.0.0.1:1/x"}, "autorestart": {"restart": 5}, "status": "pause"}
    async with http.post(f"{base_url}/1/streams", json=body) as resp:
        assert resp.status == 400
        payload = await resp.json()
    assert_luna_error(payload, 12027)
    assert payload["path"] == "autorestart.restart" and "between 0 and 1" in payload["detail"]


async def test_the_openapi_document_declares_the_same_ranges(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    async with http.get(f"{base_url}/docs/spec", headers={"Accept": "application/x-yaml"}) as resp:
        spec = yaml.safe_load(await resp.text())
    parameters = {
        p["name"]: p["schema"] for p in spec["paths"]["/1/streams"]["get"]["parameters"] if "schema" in p
    }
    assert parameters["page"]["minimum"] == 0 and "maximum" not in parameters["page"]
    restart = spec["components"]["schemas"]["lva.v1.Autorestart"]["properties"]["restart"]
    assert (restart["minimum"], restart["maximum"]) == (0, 1)


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/1/config", "application/x-yaml"),
        ("/1/config", "application/yaml"),
        ("/1/config", "text/plain"),  # the seed's way to ask /1/config for YAML
        ("/docs/spec", "application/x-yaml"),  # the seed's way to ask /docs/spec for YAML
        ("/docs/spec", "application/yaml"),
    ],
)
async def test_yaml_media_types_are_the_same_on_every_yaml_route(
    http: aiohttp.ClientSession, base_url: str, path: str, media: str
) -> None:
    async with http.get(f"{base_url}{path}", headers={"Accept": media}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == media
        document = yaml.safe_load(await resp.text())
    assert isinstance(document, dict) and document


async def test_config_keys_come_in_one_stable_order(http: aiohttp.ClientSession, base_url: str) -> None:
    answers = []
    for _ in range(5):
        async with http.get(f"{base_url}/1/config") as resp:
            answers.append(await resp.text())
    assert len(set(answers)) == 1  # byte for byte: diffable between calls and between agents
    config = json.loads(answers[0])
    assert list(config) == sorted(config)
    assert list(config["triton"]) == sorted(config["triton"])


async def test_plugins_and_analytics_agree_on_versions(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/1/analytics") as resp:
        analytics = {a["name"]: a["version"] for a in (await resp.json())["analytics"]}
    async with http.get(f"{base_url}/1/plugins") as resp:
        plugins = {p["name"]: p for p in (await resp.json())["plugins"]}
    assert analytics, "no analytics to compare"
    for name, version in analytics.items():
        assert plugins[name]["version"] == version, (name, plugins[name])
        assert plugins[name]["distribution_version"], plugins[name]  # the package's, beside it
    disabled = [p for p in plugins.values() if not p["enabled"]]
    assert disabled and all(p["version"] == "" for p in disabled)  # never loaded, so unknown
