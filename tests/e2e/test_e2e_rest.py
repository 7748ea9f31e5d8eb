"""The REST API of a real stack (Triton, core, facade as processes) over real HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

import aiohttp
import pytest
import yaml

from lva_common.aio import wait_within
from lva_facade.request_id import PATTERN
from lva_testkit.stack import Service
from lva_testkit.streams import assert_luna_error

VALID_ID = "1536751345,8b8b5937-2e9c-4e8b-a7a7-5caf86621b5a"


async def test_version_shape(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/version") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == {"Version": {"api": 1, "major": 0, "minor": 3, "patch": 1}}


async def test_request_id_is_echoed(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/version", headers={"Luna-Request-Id": VALID_ID}) as resp:
        assert resp.status == 200
        assert resp.headers["Luna-Request-Id"] == VALID_ID


async def test_request_id_is_generated(http: aiohttp.ClientSession, base_url: str) -> None:
    before = int(time.time())
    async with http.get(f"{base_url}/version") as resp:
        generated = resp.headers["Luna-Request-Id"]
    assert PATTERN.match(generated), generated
    assert abs(int(generated.split(",")[0]) - before) <= 5
    assert uuid.UUID(generated.split(",")[1]).version == 4


async def test_malformed_request_id_is_400(http: aiohttp.ClientSession, base_url: str) -> None:
    for bad in (
        "not-an-id",
        "1536751345,8B8B5937-2E9C-4E8B-A7A7-5CAF86621B5A",
        "153675134,8b8b5937-2e9c-4e8b-a7a7-5caf86621b5a",
    ):
        async with http.get(f"{base_url}/version", headers={"Luna-Request-Id": bad}) as resp:
            assert resp.status == 400
            assert_luna_error(await resp.json(), 47001)
            assert PATTERN.match(resp.headers["Luna-Request-Id"])


async def test_request_id_reaches_the_core_and_both_logs(
    http: aiohttp.ClientSession, base_url: str, core: Service, facade: Service
) -> None:
    request_id = f"{int(time.time())},{uuid.uuid4()}"
    async with http.get(f"{base_url}/1/plugins", headers={"Luna-Request-Id": request_id}) as resp:
        assert resp.status == 200
    deadline = time.monotonic() + 5
    while (
        not (request_id in core.log_text() and request_id in facade.log_text())
        and time.monotonic() < deadline
    ):
        await asyncio.sleep(0.1)
    core_line = next(line for line in core.log_text().splitlines() if request_id in line)
    assert "/lva.v1.AgentService/ListPlugins OK" in core_line
    facade_line = next(line for line in facade.log_text().splitlines() if request_id in line)
    assert f"[{request_id}]" in facade_line and "GET /1/plugins 200" in facade_line


async def test_config_json_masks_secrets(
    http: aiohttp.ClientSession, base_url: str, secret_token: str
) -> None:
    async with http.get(f"{base_url}/1/config") as resp:
        assert resp.status == 200
        text = await resp.text()
        config = await resp.json()
    assert config["facade"]["auth_token"] == "***"
    assert config["sources"]["camera"] == "rtsp://***@127.0.0.1:8554/cam"
    assert secret_token not in text and "hunter2" not in text and "admin" not in text
    # Real values, not a canned document: the core's own port and the Triton it was given.
    assert config["triton"]["mode"] == "external"
    assert isinstance(config["core"]["port"], int)


async def test_config_as_text(http: aiohttp.ClientSession, base_url: str, secret_token: str) -> None:
    async with http.get(f"{base_url}/1/config", headers={"Accept": "text/plain"}) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    assert secret_token not in text and "hunter2" not in text
    assert yaml.safe_load(text)["facade"]["auth_token"] == "***"


async def test_config_rejects_unsupported_accept(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/1/config", headers={"Accept": "application/xml"}) as resp:
        assert resp.status == 406
        assert_luna_error(await resp.json(), 12024)


async def test_plugins_come_from_entry_points(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/1/plugins") as resp:
        assert resp.status == 200
        plugins = (await resp.json())["plugins"]
    by_name = {p["name"]: p for p in plugins}
    probe = by_name["probe_sink"]
    assert probe == {
        "name": "probe_sink",
        "version": "2.4.1",  # the analytic's own, as /1/analytics shows it
        "kind": "analytic",
        "enabled": True,
        "distribution": "lva-probe-plugin",
        "entry_point": "lva_probe_plugin:ProbeSink",
        "distribution_version": "0.1.0",  # its package's
    }
    assert by_name["disabled_probe"]["enabled"] is False
    assert by_name["disabled_probe"]["version"] == ""  # never loaded: its version is unknown


async def test_healthcheck(http: aiohttp.ClientSession, base_url: str) -> None:
    for include in ("0", "1"):
        async with http.get(f"{base_url}/healthcheck", params={"include_luna_services": include}) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert list(body) == ["execution_time"]
        assert 0 <= body["execution_time"] < 5
    async with http.get(f"{base_url}/healthcheck") as resp:
        assert resp.status == 200


async def test_healthcheck_bad_query(http: aiohttp.ClientSession, base_url: str) -> None:
    for params in ({"include_luna_services": "2"}, {"include_luna_services": "yes"}, {"bogus": "1"}):
        async with http.get(f"{base_url}/healthcheck", params=params) as resp:
            assert resp.status == 400, params
            assert_luna_error(await resp.json(), 12012)


async def test_docs_spec_yaml(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/docs/spec", headers={"Accept": "application/x-yaml"}) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/x-yaml"
        spec = yaml.safe_load(await resp.text())
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path in (
        "/version",
        "/1/config",
        "/1/plugins",
        "/healthcheck",
        "/1/streams",
        "/1/streams/{stream_id}",
        "/1/ws",
        "/1/analytics",
        "/1/models",
        "/1/models/{model_name}/load",
        "/docs/spec",
        "/docs/dev",
    ):
        assert path in paths, path
    assert set(paths["/1/streams/{stream_id}"]) == {"get", "patch", "delete"}
    assert "201" in paths["/1/streams"]["post"]["responses"]
    version_schema = spec["components"]["schemas"]["lva.v1.GetVersionResponse"]
    assert list(version_schema["properties"]) == ["Version"]


async def test_docs_spec_html_is_self_contained(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/docs/spec", headers={"Accept": "text/html"}) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        html = await resp.text()
    assert html.startswith("<!DOCTYPE html>")
    assert "/1/streams/{stream_id}" in html
    assert not re.search(r"<(script|link)[^>]+(src|href)=['\"]?https?:", html)


async def test_docs_spec_wrong_accept(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/docs/spec", headers={"Accept": "application/json"}) as resp:
        assert resp.status == 406
        assert_luna_error(await resp.json(), 12024)
        assert PATTERN.match(resp.headers["Luna-Request-Id"])


async def test_docs_dev_redirects_to_the_manual(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/docs/dev", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/docs/dev/index.html"
    async with http.get(f"{base_url}/docs/dev") as resp:
        assert resp.status == 200
        assert "text/html" in resp.content_type
    async with http.get(f"{base_url}/docs/dev/errors.html") as resp:
        assert resp.status == 200
        errors_page = await resp.text()
    from lva_common.errors import REGISTRY

    for code in REGISTRY:
        assert f'id="error-{code}"' in errors_page, code
    async with http.get(f"{base_url}/docs/dev/../../pyproject.toml") as resp:
        assert resp.status == 404


async def test_unknown_route_and_method(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/1/nowhere") as resp:
        assert resp.status == 404
        assert_luna_error(await resp.json(), 12013)
    async with http.put(f"{base_url}/version") as resp:
        assert resp.status == 405
        assert_luna_error(await resp.json(), 12021)
        assert set(resp.headers["Allow"].split(", ")) == {"GET", "HEAD"}


@pytest.mark.parametrize("path", ["/version", "/healthcheck", "/1/config", "/1/plugins", "/1/streams"])
async def test_head_works_wherever_get_does(http: aiohttp.ClientSession, base_url: str, path: str) -> None:
    async with http.get(f"{base_url}{path}") as got:
        assert got.status == 200
        length = len(await got.read())
    async with http.head(f"{base_url}{path}") as resp:
        assert resp.status == 200, path
        assert resp.headers["Content-Type"] == got.headers["Content-Type"]
        assert "Luna-Request-Id" in resp.headers
        assert await resp.read() == b""  # the status and headers of GET, no body
    assert length > 0


async def test_head_of_a_bad_request_is_its_error_status(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.head(f"{base_url}/1/streams/not-a-uuid") as resp:
        assert resp.status == 400
        assert await resp.read() == b""
    async with http.head(f"{base_url}/1/streams/00000000-0000-4000-8000-000000000000") as resp:
        assert resp.status == 404


async def test_bad_bodies(http: aiohttp.ClientSession, base_url: str) -> None:
    headers = {"Content-Type": "application/json"}
    async with http.post(f"{base_url}/1/streams", data=b'{"name": ', headers=headers) as resp:
        assert resp.status == 400
        assert_luna_error(await resp.json(), 12027)
    async with http.post(
        f"{base_url}/1/streams", data=b"name=x", headers={"Content-Type": "text/plain"}
    ) as resp:
        assert resp.status == 400
        assert_luna_error(await resp.json(), 12017)
    async with http.post(f"{base_url}/1/streams", json={"data": {"roi": {"x": "left"}}}) as resp:
        assert resp.status == 400
        body = await resp.json()
        assert_luna_error(body, 12027)
        assert body["path"] == "data.roi.x" and "data.roi.x" in body["detail"]
    async with http.post(f"{base_url}/1/streams", json={"nmae": "typo"}) as resp:
        assert resp.status == 400
        assert "nmae" in (await resp.json())["detail"]
    async with http.post(f"{base_url}/1/streams", data=b"x" * (2 * 1024 * 1024), headers=headers) as resp:
        assert resp.status == 413
        assert_luna_error(await resp.json(), 47009)


async def _raw_get(address: str, path: str, host: str) -> tuple[int, dict[str, object]]:
    """One HTTP/1.1 request with the Host header exactly as given (no client library rewrites it)."""
    hostname, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(hostname, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        await writer.drain()
        raw = await wait_within(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize("host", ['a"b<script>', "evil.example/../x", "a b", ""])
async def test_a_bad_host_header_never_reaches_the_error_link(facade: Service, host: str) -> None:
    status, body = await _raw_get(facade.address, "/1/nowhere", host)
    if status == 400:  # refused by the HTTP parser itself: nothing of it is echoed either
        assert host not in json.dumps(body) or not host
        return
    assert status == 404
    assert body["link"] == f"http://{facade.address}/docs/dev/errors.html#error-12013"


async def test_a_valid_host_header_names_the_link(facade: Service) -> None:
    status, body = await _raw_get(facade.address, "/1/nowhere", "agent.example:8443")
    assert status == 404
    assert body["link"] == "http://agent.example:8443/docs/dev/errors.html#error-12013"
