"""``GET /1/images/{image_id}``: the ImagesService's generated route, over real HTTP and gRPC.

A real grpc.aio server runs the real ImagesServicer (with the core's error interceptor) over a
LocalImageStore in a temporary directory; the facade is the product's own ``build_app``, which
knows nothing of images: an RPC answering ``google.api.HttpBody`` is served as its bytes with
its content type, and documented in the OpenAPI document as a binary answer.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from lva.v1 import images_pb2_grpc
from lva_common.config import load_config
from lva_core.api.interceptor import LunaErrorInterceptor
from lva_core.api.servicers.images import ImagesServicer
from lva_core.images.policy import ImagePolicy
from lva_core.images.store import LocalImageStore
from lva_facade.app import SPEC_KEY, build_app
from lva_testkit.streams import assert_luna_error

ACCOUNT = "0b6f0b43-7a0e-4d2e-9c43-6f1f6a2d9a11"
OTHER = "4c9a3f3e-2b1d-4e5f-8a7b-1c2d3e4f5a6b"
STREAM = "6d1b0f5e-8c1a-4a53-9a49-0b7d6c3c2f10"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalImageStore]:
    images = LocalImageStore(tmp_path / "images")
    await images.start()
    yield images
    await images.close()


@pytest.fixture
async def grpc_core(store: LocalImageStore) -> AsyncIterator[str]:
    server = grpc.aio.server(interceptors=[LunaErrorInterceptor()])
    images_pb2_grpc.add_ImagesServiceServicer_to_server(ImagesServicer(store), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture
async def rest(grpc_core: str) -> AsyncIterator[tuple[str, web.Application]]:
    app = build_app(load_config(environ={"LVA_FACADE__CORE_ADDRESS": grpc_core}))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", app
    await runner.cleanup()


def frame(width: int, height: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)


async def test_an_image_is_served_as_its_bytes(
    store: LocalImageStore, rest: tuple[str, web.Application], http: aiohttp.ClientSession
) -> None:
    base, _ = rest
    stored = await store.put(ACCOUNT, STREAM, frame(1280, 720), ImagePolicy(max_size=640))
    async with http.get(f"{base}{stored.url}") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Luna-Request-Id"]
        image = Image.open(io.BytesIO(await resp.read()))
        assert image.format == "JPEG" and image.size == (640, 360)
    async with http.head(f"{base}{stored.url}") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "image/jpeg"
    png = await store.put("", STREAM, frame(40, 30), ImagePolicy(mimetype="image/png"))
    async with http.get(f"{base}{png.url}", headers={"Accept": "image/*"}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(await resp.read())).size == (40, 30)


async def test_account_isolation_and_not_found(
    store: LocalImageStore, rest: tuple[str, web.Application], http: aiohttp.ClientSession
) -> None:
    base, _ = rest
    stored = await store.put(ACCOUNT, STREAM, frame(32, 32), ImagePolicy())
    async with http.get(f"{base}{stored.url}", params={"account_id": ACCOUNT}) as resp:
        assert resp.status == 200
    async with http.get(f"{base}{stored.url}", params={"account_id": ACCOUNT.upper()}) as resp:
        assert resp.status == 200
    for url, params in (
        (stored.url, {"account_id": OTHER}),  # another account's: as if it did not exist
        (f"/1/images/{uuid.uuid4()}", {}),
    ):
        async with http.get(f"{base}{url}", params=params) as resp:
            assert resp.status == 404 and resp.content_type == "application/json"
            body = await resp.json()
            assert_luna_error(body, 47004)
            assert "not found" in body["detail"]


async def test_an_expired_image_is_not_found(
    store: LocalImageStore, rest: tuple[str, web.Application], http: aiohttp.ClientSession
) -> None:
    base, _ = rest
    stored = await store.put("", STREAM, frame(32, 32), ImagePolicy(ttl=0.2))
    async with http.get(f"{base}{stored.url}") as resp:
        assert resp.status == 200
    await asyncio.sleep(0.3)
    async with http.get(f"{base}{stored.url}") as resp:
        assert resp.status == 404
        assert_luna_error(await resp.json(), 47004)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/1/images/not-a-uuid", {}),
        ("/1/images/{id}", {"account_id": "nobody"}),
        ("/1/images/{id}", {"size": "10"}),
    ],
)
async def test_bad_queries_are_12012(
    store: LocalImageStore,
    rest: tuple[str, web.Application],
    http: aiohttp.ClientSession,
    path: str,
    params: dict[str, str],
) -> None:
    base, _ = rest
    stored = await store.put("", STREAM, frame(8, 8), ImagePolicy())
    async with http.get(f"{base}{path.format(id=stored.image_id)}", params=params) as resp:
        assert resp.status == 400
        assert_luna_error(await resp.json(), 12012)


async def test_accept_must_allow_the_image(
    store: LocalImageStore, rest: tuple[str, web.Application], http: aiohttp.ClientSession
) -> None:
    base, _ = rest
    stored = await store.put("", STREAM, frame(8, 8), ImagePolicy())
    # Neither the route's types, nor this image's type.
    for accept in ("application/json", "image/png"):
        async with http.get(f"{base}{stored.url}", headers={"Accept": accept}) as resp:
            assert resp.status == 406, accept
            assert_luna_error(await resp.json(), 12024)
    for accept in ("image/jpeg", "*/*", "image/webp, image/*;q=0.8"):
        async with http.get(f"{base}{stored.url}", headers={"Accept": accept}) as resp:
            assert resp.status == 200, accept


async def test_the_openapi_document_declares_a_binary_answer(rest: tuple[str, web.Application]) -> None:
    _, app = rest
    spec = app[SPEC_KEY]
    operation = spec["paths"]["/1/images/{image_id}"]["get"]
    assert operation["operationId"] == "GetImage" and operation["tags"] == ["images"]
    assert operation["x-grpc-method"] == "lva.v1.ImagesService/GetImage"
    parameters = {(p["name"], p["in"]) for p in operation["parameters"]}
    assert {("image_id", "path"), ("account_id", "query")} <= parameters
    content = operation["responses"]["200"]["content"]
    assert set(content) == {"image/jpeg", "image/png"}
    for media in content.values():
        assert media["schema"] == {"type": "string", "format": "binary"}
    assert operation["responses"]["default"] == {"$ref": "#/components/responses/Error"}
    assert "google.api.HttpBody" not in spec["components"]["schemas"]


async def test_a_body_over_grpc_default_message_size_is_served(
    store: LocalImageStore, rest: tuple[str, web.Application], http: aiohttp.ClientSession
) -> None:
    base, _ = rest
    # Noise does not compress: a lossless 2400x1600 picture is about 11 MiB, over gRPC's 4 MiB.
    stored = await store.put("", STREAM, frame(2400, 1600), ImagePolicy(mimetype="image/png", max_size=4096))
    async with http.get(f"{base}{stored.url}") as resp:
        assert resp.status == 200, await resp.text()
        data = await resp.read()
    assert len(data) > 4 * 1024 * 1024
    assert Image.open(io.BytesIO(data)).size == (2400, 1600)
