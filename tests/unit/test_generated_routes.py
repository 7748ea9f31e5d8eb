"""A new annotated RPC yields a new REST route and a new OpenAPI path, with no facade change.

The test proto is compiled here with grpc_tools, served by a real grpc.aio server, and the
facade is built from its descriptor and called over real HTTP.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from grpc_tools import protoc

from lva_common.config import load_config
from lva_facade.app import SPEC_KEY, build_app
from lva_facade.routes import lva_services
from lva_testkit.paths import REPO


@pytest.fixture(scope="module")
def echo_pb2(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    out = tmp_path_factory.mktemp("echo_gen")
    include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "protoc",
            f"-I{REPO / 'tests' / 'protos'}",
            f"-I{REPO / 'proto'}",
            f"-I{include}",
            f"--python_out={out}",
            str(REPO / "tests" / "protos" / "lvatest" / "v1" / "echo.proto"),
        ]
    )
    assert rc == 0
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("lvatest.v1.echo_pb2")
    finally:
        sys.path.remove(str(out))


@pytest.fixture
async def echo_server(echo_pb2: ModuleType) -> AsyncIterator[str]:
    async def echo(request: Any, context: Any) -> Any:
        return echo_pb2.EchoResponse(echoes=[request.name] * request.times)

    async def shout(request: Any, context: Any) -> Any:
        return echo_pb2.ShoutResponse(loud_text=request.text.upper())

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(
            echo, echo_pb2.EchoRequest.FromString, echo_pb2.EchoResponse.SerializeToString
        ),
        "Shout": grpc.unary_unary_rpc_method_handler(
            shout, echo_pb2.ShoutRequest.FromString, echo_pb2.ShoutResponse.SerializeToString
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("lvatest.v1.EchoService", handlers)]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    # Port 0: the port is the kernel's choice, read back once bound, so nothing can take it first.
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def test_new_rpc_becomes_route_and_openapi_path(echo_pb2: ModuleType, echo_server: str) -> None:
    config = load_config(environ={"LVA_FACADE__CORE_ADDRESS": echo_server})
    echo_service = echo_pb2.DESCRIPTOR.services_by_name["EchoService"]

    without = build_app(config)
    with_echo = build_app(config, [*lva_services(), echo_service])
    assert "/1/echo/{name}" not in without[SPEC_KEY]["paths"]
    spec_paths = with_echo[SPEC_KEY]["paths"]
    assert spec_paths["/1/echo/{name}"]["get"]["operationId"] == "Echo"
    assert [p["name"] for p in spec_paths["/1/echo/{name}"]["get"]["parameters"]][1:] == ["name", "times"]
    assert "201" in spec_paths["/1/shout"]["post"]["responses"]
    assert "lvatest.v1.ShoutRequest" in with_echo[SPEC_KEY]["components"]["schemas"]

    runner, base = await _serve(with_echo)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/1/echo/luna", params={"times": "3"}) as resp:
                assert resp.status == 200
                assert await resp.json() == {"echoes": ["luna", "luna", "luna"]}
            async with http.post(f"{base}/1/shout", json={"text": "hello"}) as resp:
                assert resp.status == 201
                assert await resp.json() == {"loud_text": "HELLO"}
            async with http.get(f"{base}/1/echo/luna", params={"times": "many"}) as resp:
                assert resp.status == 400
                assert (await resp.json())["error_code"] == 12012
            async with http.get(f"{base}/docs/spec", headers={"Accept": "application/x-yaml"}) as resp:
                assert "/1/echo/{name}:" in await resp.text()
    finally:
        await runner.cleanup()
