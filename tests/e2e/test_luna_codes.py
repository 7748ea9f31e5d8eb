"""LUNA's codes for requests no route serves, over real HTTP against the session's stack.

LUNA PLATFORM answers a path it has no resource for with 404 / 12013 ("Resource not found",
detail "Page not found"), a method the resource lacks with 405 / 12021 ("Method not allowed")
and an absent required query parameter with 400 / 12014 ("Required parameter not found",
detail "Required parameter '<name>' not found"). A parameter that is present but invalid keeps
its own code (12012 for a stream_id that is not a UUID, 47004 for a stream that does not exist).
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from typing import Any

import aiohttp
import pytest
import websockets
import yaml
from websockets.exceptions import InvalidStatus

from lva_common.errors import REGISTRY
from lva_facade.request_id import PATTERN
from lva_testkit.clips import clip
from lva_testkit.stack import Service
from lva_testkit.streams import create, delete

# LUNA's four keys: every error body has them; the answers of 12013, 12014 and 12021 nothing else.
LUNA_KEYS = {"error_code", "desc", "detail", "link"}
LUNA_ONLY = {12013, 12014, 12021}
RETIRED = {47002, 47003}  # the project's codes for these answers before LUNA's were adopted


def upgrade_headers() -> dict[str, str]:
    """The headers of a valid RFC 6455 handshake: the answer is the handler's, not the parser's."""
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }


async def luna_answer(resp: aiohttp.ClientResponse, status: int, code: int) -> dict[str, Any]:
    """``resp`` is exactly ``status`` with a LUNA body of exactly ``code``; the body."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json", text
    assert PATTERN.match(resp.headers["Luna-Request-Id"]), resp.headers
    body: dict[str, Any] = await resp.json()
    assert set(body) == LUNA_KEYS if code in LUNA_ONLY else set(body) >= LUNA_KEYS, body
    assert body["error_code"] == code, body
    assert body["desc"] == REGISTRY[code].desc, body
    assert REGISTRY[code].http_status == status
    assert str(body["link"]).endswith(f"/docs/dev/errors.html#error-{code}"), body
    return body


# ------------------------------------------------------------------------------- unknown routes


@pytest.mark.parametrize(
    "path",
    [
        "/1/nope",
        "/2/streams",
        "/1/streams/x/y/z",
        "/1/streams/",
        "/1/models/yolo",
        "/1/models/yolo/load/now",
        "/1",
        "/nope",
        "/versions",
        "/1/version",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_an_unknown_route_is_404_12013(
    http: aiohttp.ClientSession, base_url: str, path: str, method: str
) -> None:
    async with http.request(method, f"{base_url}{path}") as resp:
        body = await luna_answer(resp, 404, 12013)
    assert body["desc"] == "Resource not found"
    assert body["detail"] == "Page not found"
    assert "Allow" not in resp.headers


async def test_head_of_an_unknown_route_is_404_without_a_body(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    async with http.head(f"{base_url}/1/nope") as resp:
        assert resp.status == 404
        assert PATTERN.match(resp.headers["Luna-Request-Id"])
        assert await resp.read() == b""


async def test_a_missing_manual_page_is_12013(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/docs/dev/no-such-page.html") as resp:
        body = await luna_answer(resp, 404, 12013)
    assert "no-such-page.html" in body["detail"]


async def test_the_link_of_12013_names_its_section_of_the_manual(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    async with http.get(f"{base_url}/2/streams") as resp:
        body = await luna_answer(resp, 404, 12013)
    assert body["link"] == f"{base_url}/docs/dev/errors.html#error-12013"
    async with http.get(body["link"].split("#")[0]) as resp:
        assert resp.status == 200
        page = await resp.text()
    for code in (12013, 12014, 12021):
        assert f'id="error-{code}"' in page, code
    # Old links to the retired codes still land on the page, where it says what replaced them.
    for code in RETIRED:
        assert f'id="error-{code}"' in page, code
    assert "47002: now 12013" in page and "47003: now 12021" in page


# ------------------------------------------------------------------------------- wrong methods

STREAM = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/1/agents", {"GET", "HEAD"}),
        ("DELETE", "/1/analytics", {"GET", "HEAD"}),
        ("POST", "/version", {"GET", "HEAD"}),
        ("PATCH", "/healthcheck", {"GET", "HEAD"}),
        ("PUT", "/1/streams", {"GET", "HEAD", "POST"}),
        ("DELETE", "/1/streams", {"GET", "HEAD", "POST"}),
        ("POST", f"/1/streams/{STREAM}", {"GET", "HEAD", "PATCH", "DELETE"}),
        ("PUT", "/1/streams/not-a-uuid", {"GET", "HEAD", "PATCH", "DELETE"}),
        ("GET", "/1/models/yolo/load", {"POST"}),
        ("DELETE", "/1/models/yolo/unload", {"POST"}),
        ("POST", "/1/ws", {"GET", "HEAD"}),
        ("OPTIONS", "/1/config", {"GET", "HEAD"}),
        ("POST", "/docs/spec", {"GET", "HEAD"}),
    ],
)
async def test_a_wrong_method_is_405_12021_with_allow(
    http: aiohttp.ClientSession, base_url: str, method: str, path: str, allowed: set[str]
) -> None:
    async with http.request(method, f"{base_url}{path}") as resp:
        body = await luna_answer(resp, 405, 12021)
    assert body["desc"] == "Method not allowed"
    assert method in body["detail"], body
    assert set(resp.headers["Allow"].split(", ")) == allowed


async def test_allow_lists_what_the_openapi_document_says_each_route_has(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    """For every path of the document, a method none of its routes has is 405, and Allow is
    exactly the methods the document lists (and HEAD wherever GET is, as the facade serves it)."""
    async with http.get(f"{base_url}/docs/spec", headers={"Accept": "application/x-yaml"}) as resp:
        assert resp.status == 200
        spec = yaml.safe_load(await resp.text())
    for template, operations in spec["paths"].items():
        path = template.replace("{stream_id}", STREAM).replace("{model_name}", "yolo")
        methods = {m.upper() for m in operations}
        expected = methods | ({"HEAD"} if "GET" in methods else set())
        async with http.put(f"{base_url}{path}") as resp:
            await luna_answer(resp, 405, 12021)
            assert set(resp.headers["Allow"].split(", ")) == expected, template


# ----------------------------------------------------------------------- required query parameters


@pytest.mark.parametrize("query", ["", "?account_id=" + str(uuid.uuid4())])
@pytest.mark.parametrize("handshake", [True, False])
async def test_ws_without_stream_id_is_400_12014_before_the_upgrade(
    http: aiohttp.ClientSession, base_url: str, query: str, handshake: bool
) -> None:
    headers = upgrade_headers() if handshake else {}
    async with http.get(f"{base_url}/1/ws{query}", headers=headers) as resp:
        body = await luna_answer(resp, 400, 12014)
        assert "Upgrade" not in resp.headers
    assert body["desc"] == "Required parameter not found"
    assert body["detail"] == "Required parameter 'stream_id' not found"


async def test_the_openapi_document_marks_exactly_the_required_query_parameters(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    """The proto's google.api.field_behavior REQUIRED is what the document says: stream_id of /1/ws."""
    async with http.get(f"{base_url}/docs/spec", headers={"Accept": "application/x-yaml"}) as resp:
        spec = yaml.safe_load(await resp.text())
    required = sorted(
        (path, parameter["name"])
        for path, operations in spec["paths"].items()
        for operation in operations.values()
        if isinstance(operation, dict)
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "query" and parameter["required"]
    )
    assert required == [("/1/ws", "stream_id")]


async def test_a_websocket_client_without_stream_id_gets_12014(facade: Service) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(f"ws://{facade.address}/1/ws", open_timeout=30):
            pass
    response = refused.value.response
    assert response.status_code == 400
    body = json.loads(response.body)
    assert set(body) == LUNA_KEYS, body
    assert body["error_code"] == 12014, body
    assert body["detail"] == "Required parameter 'stream_id' not found"


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("?stream_id=", 400, 12012),  # present, empty: invalid, not missing
        ("?stream_id=not-a-uuid", 400, 12012),
        (f"?stream_id={STREAM}&account_id=nope", 400, 12012),
        (f"?stream_id={STREAM}", 404, 47004),
        ("?x=1", 400, 12012),  # an unknown parameter is reported before a missing one
        (f"?stream_id={STREAM}&account_id={uuid.uuid4()}", 404, 47004),
    ],
)
async def test_ws_with_an_invalid_stream_id_keeps_its_code(
    http: aiohttp.ClientSession, base_url: str, query: str, status: int, code: int
) -> None:
    async with http.get(f"{base_url}/1/ws{query}", headers=upgrade_headers()) as resp:
        await luna_answer(resp, status, code)


async def test_ws_with_a_valid_stream_id_upgrades(
    http: aiohttp.ClientSession, base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = clip(tmp_path_factory.mktemp("luna-codes"))
    body = {"name": "luna-codes", "data": {"reference": str(path), "type": "videofile"}, "status": "pause"}
    stream_id = await create(http, base_url, body)
    try:
        async with http.ws_connect(f"{base_url}/1/ws?stream_id={stream_id}") as ws:
            first = await ws.receive_json(timeout=30)
        assert first["stream_status"] == "pause", first
    finally:
        await delete(http, base_url, stream_id)


# --------------------------------------------------------------------------- the OpenAPI document


async def test_the_openapi_error_codes_are_the_registry(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/docs/spec", headers={"Accept": "application/x-yaml"}) as resp:
        assert resp.status == 200
        spec = yaml.safe_load(await resp.text())
    codes = spec["components"]["schemas"]["LunaError"]["properties"]["error_code"]["enum"]
    assert codes == sorted(REGISTRY)
    assert {12013, 12014, 12021} <= set(codes)
    assert not RETIRED & set(codes)
    assert not RETIRED & set(REGISTRY)
    # Every operation answers its errors with the one LUNA error body.
    for template, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"]["default"] == {"$ref": "#/components/responses/Error"}, (
                method,
                template,
            )
