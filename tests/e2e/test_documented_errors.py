"""Error codes of the registry that no other test saw raised, each where its docs say it applies.

- 47008: an RPC a servicer does not implement answers 501 with 47008 through the facade
  (docs/decisions.md), from the core's own interceptor and the generated base servicer.
- 47006 before the upgrade of /1/ws: the core is down when the client connects (docs/streams.md).
- 45001: LUNA's code, kept in the registry, but the agent reports stream processing failures in
  the stream's ``status`` and ``error``, never as an API error; its entry says so.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from lva.v1 import streams_pb2, streams_pb2_grpc
from lva_common.errors import REGISTRY
from lva_core.api.interceptor import LunaErrorInterceptor
from lva_testkit.documented import luna_error
from lva_testkit.ports import free_port
from lva_testkit.stack import start_facade
from lva_testkit.streams import assert_luna_error


@pytest.fixture
async def unimplemented_core() -> AsyncIterator[str]:
    """A gRPC server with the core's interceptor and the generated StreamsService base servicer:
    every method raises NotImplementedError, as an RPC a new proto adds does until it is written."""
    server = grpc.aio.server(interceptors=[LunaErrorInterceptor()])
    # Abstract in the stubs only: at run time every method of the generated base raises
    # NotImplementedError, which is what this server is for.
    base = streams_pb2_grpc.StreamsServiceServicer()  # type: ignore[abstract]
    streams_pb2_grpc.add_StreamsServiceServicer_to_server(base, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_an_unimplemented_rpc_is_501_with_47008_over_rest_and_grpc(
    unimplemented_core: str, log_dir: Path, http: aiohttp.ClientSession
) -> None:
    async with grpc.aio.insecure_channel(unimplemented_core) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await streams_pb2_grpc.StreamsServiceStub(channel).ListStreams(streams_pb2.ListStreamsRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    error = luna_error(caught.value)
    assert error.code == 47008
    assert error.detail == "/lva.v1.StreamsService/ListStreams is not implemented yet"
    facade = start_facade(log_dir, unimplemented_core)
    try:
        async with http.get(f"http://{facade.address}/1/streams") as resp:
            assert resp.status == 501
            body = await resp.json()
        assert_luna_error(body, 47008)
        assert body["detail"] == error.detail
    finally:
        facade.stop()


async def test_websocket_to_a_dead_core_is_503_47006_before_the_upgrade(
    log_dir: Path, http: aiohttp.ClientSession
) -> None:
    facade = start_facade(log_dir, f"127.0.0.1:{free_port()}")  # nothing listens there
    try:
        url = f"ws://{facade.address}/1/ws?stream_id={uuid.uuid4()}"
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(url)
        assert caught.value.status == 503
        # The same request as plain HTTP shows the LUNA body the handshake error hides.
        headers = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        async with http.get(url.replace("ws://", "http://", 1), headers=headers) as resp:
            assert resp.status == 503
            assert_luna_error(await resp.json(), 47006)
    finally:
        facade.stop()


def test_45001_is_kept_for_luna_and_documented_as_never_answered() -> None:
    # The stream engine reports a stream it cannot process as status restart/failure with an
    # error (tests/e2e/test_documented_streams.py); no API answer carries 45001.
    spec = REGISTRY[45001]
    assert (spec.code, spec.desc, spec.http_status) == (45001, "Stream processing error", 500)
    assert "never as an API error" in spec.explanation
    assert "status" in spec.explanation and "error" in spec.explanation


def test_45001_is_raised_nowhere_in_the_services() -> None:
    # The registry's promise above, checked against the code: no service module names it.
    repo = Path(__file__).resolve().parents[2]
    sources = [*repo.glob("lva_core/**/*.py"), *repo.glob("lva_facade/**/*.py")]
    assert sources
    for source in sources:
        text = source.read_text()
        assert "STREAM_PROCESSING" not in text and "45001" not in text, source
