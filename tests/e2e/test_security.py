"""Security guarantees, each against the real stack: a core and a facade configured from one
YAML file with every security setting on (bearer token, mutual TLS between facade and core,
a rate limit on stream creation, confined local files), on the session's real Triton.

Covered here: bearer authentication (REST and the WebSocket upgrade), TLS on gRPC, account
isolation of list / PATCH / DELETE, the rate limit, credentials masked in the API and the logs,
file confinement, the scheme allow-list and the body size limit. Masking of /1/config is
covered by test_e2e_rest.py and test_e2e_grpc.py, GET and /1/ws of another account by
test_e2e_streams.py.

Why one file of over 400 lines: every guarantee runs against one stack with all security
settings on, started once for the module.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import websockets
import yaml
from websockets.exceptions import InvalidStatus
from yarl import URL

from lva.v1 import agent_pb2, agent_pb2_grpc
from lva_common.config import load_config
from lva_core.api.ratelimit import RateLimiter
from lva_core.pipeline.source.errors import SourceError, classify
from lva_core.pipeline.source.reference import validate_reference
from lva_facade.auth import bearer_token
from lva_testkit.clips import clip
from lva_testkit.stack import Service, start_core, start_facade

TOKEN = "tok-" + uuid.uuid4().hex
PASSWORD = "hunter2-" + uuid.uuid4().hex[:8]
QUERY_TOKEN = "qt-" + uuid.uuid4().hex[:8]
BURST, PER_SECOND = 3, 0.25  # one token every 4 s: a fourth creation in a row is refused
SERVER_NAME = "lva-core.test"


# ---- a throwaway PKI, made with the openssl CLI ----------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _leaf(pki: Path, name: str, extensions: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(pki / f"{name}.key"), "-out", str(pki / f"{name}.csr"), "-subj", f"/CN={name}",
    )  # fmt: skip
    (pki / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", str(pki / f"{name}.csr"), "-CA", str(pki / "ca.crt"),
        "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "1",
        "-out", str(pki / f"{name}.crt"), "-extfile", str(pki / f"{name}.ext"),
    )  # fmt: skip


def make_pki(pki: Path) -> Path:
    """A CA, the core's server certificate (for SERVER_NAME) and the facade's client certificate."""
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"), "-days", "1", "-subj", "/CN=lva-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _leaf(pki, "core", f"subjectAltName=DNS:{SERVER_NAME}\nextendedKeyUsage=serverAuth\n")
    _leaf(pki, "facade", "extendedKeyUsage=clientAuth\n")
    return pki


# ---- the secured stack -----------------------------------------------------------------------


@dataclass
class Stack:
    core: Service
    facade: Service
    pki: Path
    allowed: Path  # the one directory local files may come from
    outside: Path  # a directory next to it, with a real clip in it

    @property
    def base_url(self) -> str:
        return f"http://{self.facade.address}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, log_dir: Path, triton: Service) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("security")
    (root / "pki").mkdir()
    pki = make_pki(root / "pki")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    clip(allowed, "inside.mp4", seconds=1.0, size=(160, 96))
    clip(outside, "secret.mp4", seconds=1.0, size=(160, 96))
    (allowed / "escape.mp4").symlink_to(outside / "secret.mp4")
    settings = {
        "core": {
            "tls": {
                "cert_file": str(pki / "core.crt"),
                "key_file": str(pki / "core.key"),
                "client_ca_file": str(pki / "ca.crt"),
            }
        },
        "facade": {
            "auth_token": TOKEN,
            "core_tls": {
                "ca_file": str(pki / "ca.crt"),
                "cert_file": str(pki / "facade.crt"),
                "key_file": str(pki / "facade.key"),
                "server_name": SERVER_NAME,
            },
        },
        "streams": {
            "allowed_file_dirs": [str(allowed)],
            "create_rate": {"per_second": PER_SECOND, "burst": BURST},
            "open_timeout": 2.0,
            "read_timeout": 2.0,
        },
        "sources": {"camera": f"rtsp://admin:{PASSWORD}@127.0.0.1:8554/cam"},
    }
    config = root / "lva.yaml"
    config.write_text(yaml.safe_dump(settings))
    env = {"LVA_CONFIG": str(config)}
    # start_core names the test's temporary directory as allowed; this stack's YAML decides.
    core = start_core(
        log_dir, triton.address, {**env, "LVA_STREAMS__ALLOWED_FILE_DIRS": json.dumps([str(allowed)])}
    )
    try:
        facade = start_facade(log_dir, core.address, env)
    except BaseException:
        core.stop()
        raise
    yield Stack(core, facade, pki, allowed, outside)
    facade.stop()
    core.stop()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A session that sends the token."""
    async with aiohttp.ClientSession(headers=AUTH, timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def post_stream(
    client: aiohttp.ClientSession, stack: Stack, reference: str, **extra: Any
) -> tuple[int, dict[str, Any]]:
    """POST /1/streams for a paused stream of a fresh account (unless given): the rate limit
    counts per account, so only the test about it exhausts one."""
    body: dict[str, Any] = {
        "account_id": str(uuid.uuid4()),
        "status": "pause",
        "data": {"reference": reference},
    }
    body.update(extra)
    async with client.post(f"{stack.base_url}/1/streams", json=body) as resp:
        return resp.status, dict(await resp.json())


def assert_luna(payload: dict[str, Any], code: int) -> None:
    assert payload["error_code"] == code, payload
    assert {"error_code", "desc", "detail", "link"} <= set(payload)
    assert payload["link"].endswith(f"#error-{code}")


# ---- bearer authentication -------------------------------------------------------------------


async def test_routes_need_the_bearer_token(stack: Stack, http: aiohttp.ClientSession) -> None:
    url = f"{stack.base_url}/1/streams"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer"},
    ):
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 401, (headers, await resp.text())
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert resp.headers["Luna-Request-Id"]
            assert_luna(await resp.json(), 47010)
    # Routes that do not exist and the configuration need it too.
    for path in ("/1/config", "/1/no-such-route", "/docs/../1/config", "/docs/%2E%2E/1/config"):
        async with http.get(URL(stack.base_url + path, encoded=True)) as resp:
            assert resp.status == 401, (path, resp.status)
    async with http.get(url, headers={"Authorization": f"bearer {TOKEN}"}) as resp:
        assert resp.status == 200, await resp.text()
    # A probe, a scraper and a reader of the manual need no token.
    for path, accept in (
        ("/healthcheck", "application/json"),
        ("/version", "application/json"),
        ("/metrics", "*/*"),
        ("/docs/spec", "application/x-yaml"),
    ):
        async with http.get(f"{stack.base_url}{path}", headers={"Accept": accept}) as resp:
            assert resp.status == 200, (path, await resp.text())
    async with http.get(f"{stack.base_url}/docs/dev", allow_redirects=False) as resp:
        assert resp.status == 302
    # The token never reaches a log.
    assert TOKEN not in stack.facade.log_text() and TOKEN not in stack.core.log_text()


async def test_openapi_declares_the_optional_bearer_scheme(stack: Stack, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{stack.base_url}/docs/spec", headers={"Accept": "application/x-yaml"}) as resp:
        spec = yaml.safe_load(await resp.text())
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert {} in spec["security"] and {"bearerAuth": []} in spec["security"]


async def test_websocket_upgrade_needs_the_token(stack: Stack, client: aiohttp.ClientSession) -> None:
    status, created = await post_stream(client, stack, str(stack.allowed / "inside.mp4"))
    assert status == 201, created
    uri = f"ws://{stack.facade.address}/1/ws?stream_id={created['stream_id']}"
    for headers in ({}, {"Authorization": "Bearer nope"}):
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(uri, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body or b"{}")["error_code"] == 47010
    # A token in the query string is not a way around the header (it would land in access logs).
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(f"{uri}&access_token={TOKEN}"):
            pass
    assert refused.value.response.status_code == 401
    async with asyncio.timeout(20), websockets.connect(uri, additional_headers=AUTH) as ws:
        first = json.loads(await ws.recv())
    assert first["stream_status"] == "pause"


def test_bearer_header_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("  BEARER   abc  ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


# ---- TLS between facade and core -------------------------------------------------------------


async def test_facade_reaches_the_core_over_mutual_tls(stack: Stack, client: aiohttp.ClientSession) -> None:
    status, created = await post_stream(client, stack, str(stack.allowed / "inside.mp4"))
    assert status == 201, created
    async with client.get(f"{stack.base_url}{created['url']}") as resp:
        assert resp.status == 200
        assert (await resp.json())["stream_id"] == created["stream_id"]
    assert "(TLS)" in stack.core.log_text()


async def _version(channel: grpc.aio.Channel) -> grpc.StatusCode:
    async with channel:
        try:
            await agent_pb2_grpc.AgentServiceStub(channel).GetVersion(
                agent_pb2.GetVersionRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


async def test_core_refuses_plaintext_and_clients_without_a_certificate(stack: Stack) -> None:
    pki = stack.pki
    ca, key, cert = ((pki / name).read_bytes() for name in ("ca.crt", "facade.key", "facade.crt"))
    override = [("grpc.ssl_target_name_override", SERVER_NAME)]
    assert await _version(grpc.aio.insecure_channel(stack.core.address)) == grpc.StatusCode.UNAVAILABLE
    no_cert = grpc.ssl_channel_credentials(root_certificates=ca)
    assert (
        await _version(grpc.aio.secure_channel(stack.core.address, no_cert, options=override))
        == grpc.StatusCode.UNAVAILABLE
    )
    # The same client with the facade's certificate gets through: the refusals above were TLS.
    with_cert = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    assert (
        await _version(grpc.aio.secure_channel(stack.core.address, with_cert, options=override))
        == grpc.StatusCode.OK
    )


# ---- account isolation -----------------------------------------------------------------------


async def test_another_account_cannot_list_update_or_delete(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    owner, intruder = str(uuid.uuid4()), str(uuid.uuid4())
    status, created = await post_stream(client, stack, str(stack.allowed / "inside.mp4"), account_id=owner)
    assert status == 201, created
    url = f"{stack.base_url}{created['url']}"
    async with client.get(f"{stack.base_url}/1/streams", params={"account_id": intruder}) as resp:
        assert await resp.json() == {"streams": [], "count": 0}
    async with client.get(f"{stack.base_url}/1/streams", params={"account_id": owner}) as resp:
        listed = await resp.json()
    assert [s["stream_id"] for s in listed["streams"]] == [created["stream_id"]]
    async with client.patch(url, json={"status": "pending", "account_id": intruder}) as resp:
        assert resp.status == 404
        assert_luna(await resp.json(), 47004)
    async with client.delete(url, params={"account_id": intruder}) as resp:
        assert resp.status == 404
        assert_luna(await resp.json(), 47004)
    async with client.get(url) as resp:  # untouched: still there, still paused
        assert (await resp.json())["status"] == "pause"
    async with client.patch(url, json={"status": "pause", "account_id": owner}) as resp:
        assert resp.status == 200, await resp.text()
    async with client.delete(url, params={"account_id": owner}) as resp:
        assert resp.status == 204
    async with client.get(url) as resp:
        assert resp.status == 404


# ---- rate limit on stream creation -----------------------------------------------------------


async def test_stream_creation_is_rate_limited_per_account(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    account, other = str(uuid.uuid4()), str(uuid.uuid4())
    reference = str(stack.allowed / "inside.mp4")
    statuses = []
    for _ in range(BURST + 3):
        status, payload = await post_stream(client, stack, reference, account_id=account)
        statuses.append(status)
        if status == 429:
            break
    # The burst passes; with one token per 4 s the next ones cannot all pass.
    assert statuses[:BURST] == [201] * BURST and statuses[-1] == 429, statuses
    assert_luna(payload, 47011)
    assert 0 < payload["retry_after"] <= 1 / PER_SECOND
    async with client.post(
        f"{stack.base_url}/1/streams",
        json={"account_id": account, "status": "pause", "data": {"reference": reference}},
    ) as resp:
        assert resp.status == 429
        retry_after = int(resp.headers["Retry-After"])
    assert 1 <= retry_after <= 1 / PER_SECOND
    # Another account is not slowed down by this one.
    status, payload = await post_stream(client, stack, reference, account_id=other)
    assert status == 201, payload
    await asyncio.sleep(retry_after)
    status, payload = await post_stream(client, stack, reference, account_id=account)
    assert status == 201, payload


def test_rate_limiter_refills_and_bounds_its_memory() -> None:
    now = [100.0]
    limiter = RateLimiter(per_second=2.0, burst=2, max_accounts=3, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(0.5)
    for n in range(10):
        limiter.acquire(f"other-{n}")
    assert len(limiter) == 3
    assert RateLimiter.from_config({"streams": {"create_rate": {"per_second": 0}}}) is None
    defaults = RateLimiter.from_config(load_config(environ={}))
    assert defaults is not None and (defaults.per_second, defaults.burst) == (20.0, 100)


# ---- credentials masked in answers and logs --------------------------------------------------


async def test_stream_credentials_are_masked_everywhere(
    stack: Stack, client: aiohttp.ClientSession, nothing_listens: int
) -> None:
    reference = f"rtsp://admin:{PASSWORD}@127.0.0.1:{nothing_listens}/cam?token={QUERY_TOKEN}&channel=1"
    status, created = await post_stream(
        client, stack, reference, data={"reference": reference, "type": "stream"}, autorestart={"restart": 0}
    )
    assert status == 201, created
    url = f"{stack.base_url}{created['url']}"
    uri = f"ws://{stack.facade.address}/1/ws?stream_id={created['stream_id']}"
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(30), websockets.connect(uri, additional_headers=AUTH) as ws:
        messages.append(json.loads(await ws.recv()))
        async with client.patch(url, json={"status": "pending"}) as resp:
            assert resp.status == 200
        while messages[-1]["stream_status"] != "failure":
            messages.append(json.loads(await ws.recv()))
    async with client.get(url) as resp:
        stream = await resp.json()
    async with client.get(f"{stack.base_url}/1/streams", params={"account_id": stream["account_id"]}) as resp:
        listed = await resp.json()
    assert stream["data"]["reference"] == mask(reference)
    assert listed["streams"][0]["data"]["reference"] == mask(reference)
    # The failure names the source, masked: the error is useful and leaks nothing.
    assert "127.0.0.1" in stream["error"] and "***" in stream["error"], stream["error"]
    assert messages[-1]["error"] == stream["error"]
    async with client.get(f"{stack.base_url}/1/config") as resp:
        config_text = await resp.text()
    assert "127.0.0.1:8554" in config_text
    for secret in (PASSWORD, QUERY_TOKEN):
        for where, text in (
            ("GET", json.dumps(stream)),
            ("list", json.dumps(listed)),
            ("ws", json.dumps(messages)),
            ("config", config_text),
            ("core log", stack.core.log_text()),
            ("facade log", stack.facade.log_text()),
        ):
            assert secret not in text, f"{secret} leaks into the {where}"


def mask(reference: str) -> str:
    host_and_rest = reference.split("@", 1)[1].replace(QUERY_TOKEN, "***")
    return f"rtsp://***@{host_and_rest}"


def test_source_errors_mask_the_url_ffmpeg_quotes() -> None:
    reference = f"rtsp://admin:{PASSWORD}@camera.invalid/s?token={QUERY_TOKEN}"
    error = classify(OSError(5, "Input/output error", reference), reference=reference)
    assert PASSWORD not in str(error) and QUERY_TOKEN not in str(error)
    assert "camera.invalid" in str(error)


# ---- local files: confinement and the scheme allow-list --------------------------------------


async def test_local_files_are_confined(stack: Stack, client: aiohttp.ClientSession) -> None:
    allowed, outside = stack.allowed, stack.outside
    status, payload = await post_stream(client, stack, str(allowed / "inside.mp4"))
    assert status == 201, payload
    status, payload = await post_stream(client, stack, (allowed / "inside.mp4").as_uri())
    assert status == 201, payload
    refused = [
        "/etc/passwd",
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        str(outside / "secret.mp4"),
        f"{allowed}/../outside/secret.mp4",
        f"{allowed}/%2E%2E/outside/secret.mp4".replace("%2E%2E", ".."),
        f"file://{allowed}/%2E%2E/outside/secret.mp4",
        str(allowed / "escape.mp4"),  # a symbolic link out of the directory
        str(outside / "missing.mp4"),  # outside and missing: the same answer as outside
        "../../../../../../etc/passwd",
        "var/sample.mp4",  # relative: resolved against the core's directory, not allowed here
    ]
    for reference in refused:
        status, payload = await post_stream(client, stack, reference)
        assert status == 400, (reference, payload)
        assert_luna(payload, 12027)
        assert payload["path"] == "data.reference"
        assert "unsupported_scheme" in payload["detail"], (reference, payload["detail"])
    # Inside the directory, a missing file is just missing.
    status, payload = await post_stream(client, stack, str(allowed / "missing.mp4"))
    assert status == 400 and "not_found" in payload["detail"], payload


@pytest.mark.parametrize(
    "reference",
    [
        "concat:/etc/passwd|/etc/hosts",
        "subfile:,start,0,end,100,:/etc/passwd",
        "pipe:0",
        "udp://127.0.0.1:1234",
        "tcp://127.0.0.1:1234",
        "data:video/mp4;base64,AAAA",
        "ftp://host/x.mp4",
        "gopher://host/x",
        "rtsp:///no-host",
        "http://",
        " /etc/passwd",
        "rtsp://host/x\nfile:///etc/passwd",
    ],
)
async def test_schemes_outside_the_allow_list_are_refused(
    stack: Stack, client: aiohttp.ClientSession, reference: str
) -> None:
    status, payload = await post_stream(client, stack, reference)
    assert status == 400, payload
    assert_luna(payload, 12027)
    assert "unsupported_scheme" in payload["detail"], payload["detail"]


def test_default_confinement(tmp_path: Path) -> None:
    config = load_config(environ={})
    assert config["streams"]["allowed_file_dirs"] == ["var", "media"]
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0")
    validate_reference(str(video), "videofile", [tmp_path])
    # An empty list allows no file at all; it does not mean "anywhere".
    with pytest.raises(SourceError) as caught:
        validate_reference(str(video), "videofile", [])
    assert caught.value.kind == "unsupported_scheme"


# ---- request body size -----------------------------------------------------------------------


async def test_oversized_body_is_413_and_the_facade_keeps_serving(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    limit = load_config(environ={})["facade"]["max_body_size"]
    body = json.dumps({"name": "x" * (limit + 1), "data": {"reference": str(stack.allowed / "inside.mp4")}})
    started = time.monotonic()
    async with client.post(
        f"{stack.base_url}/1/streams", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 413
        assert resp.headers["Luna-Request-Id"]
        assert_luna(await resp.json(), 47009)
    assert time.monotonic() - started < 20
    # A large body that is valid (the longest name allowed) is served as usual.
    status, payload = await post_stream(client, stack, str(stack.allowed / "inside.mp4"), name="x" * 256)
    assert status == 201, payload
