"""UUIDs are compared in one form: any case in, canonical lower case stored and shown.

A stream id or account id given in upper case names the same object as its lower-case form,
over REST, the WebSocket and gRPC alike; spellings that are not 8-4-4-4-12 hex digits are
refused the same way everywhere (12012 where an id names an object, 12027 in a body).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import websockets

from lva.v1 import streams_pb2, streams_pb2_grpc
from lva_common.errors import from_trailers
from lva_testkit.clips import clip
from lva_testkit.stack import Service
from lva_testkit.streams import assert_luna_error, file_stream

ACCOUNT = "6f1b3c0e-4a5d-4e8f-9b2a-7c6d5e4f3a2b"
# Forms Python's uuid.UUID accepts but the agent does not: each would be a second spelling.
NON_CANONICAL = [
    "{" + ACCOUNT + "}",
    "urn:uuid:" + ACCOUNT,
    ACCOUNT.replace("-", ""),
    "6f1b3c0e4a5d-4e8f-9b2a-7c6d-5e4f3a2b",  # hyphens moved
]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip(tmp_path_factory.mktemp("clips"))


@pytest.fixture
async def paused_stream(http: aiohttp.ClientSession, base_url: str, sample: Path) -> AsyncIterator[str]:
    """A paused stream created with its account in upper case; deleted whatever the test does."""
    body = file_stream(sample, [], status="pause", account_id=ACCOUNT.upper())
    async with http.post(f"{base_url}/1/streams", json=body) as resp:
        payload = await resp.json()
        assert resp.status == 201, payload
    stream_id = str(payload["stream_id"])
    try:
        yield stream_id
    finally:
        async with http.delete(f"{base_url}/1/streams/{stream_id}"):
            pass


async def test_an_upper_case_account_is_stored_and_found_in_lower_case(
    http: aiohttp.ClientSession, base_url: str, paused_stream: str
) -> None:
    async with http.get(f"{base_url}/1/streams/{paused_stream}") as resp:
        assert resp.status == 200
        assert (await resp.json())["account_id"] == ACCOUNT
    for spelling in (ACCOUNT, ACCOUNT.upper()):
        async with http.get(f"{base_url}/1/streams", params={"account_id": spelling}) as resp:
            assert resp.status == 200
            listed = await resp.json()
        assert [s["stream_id"] for s in listed["streams"]] == [paused_stream], spelling


async def test_an_upper_case_stream_id_names_the_same_stream_over_rest(
    http: aiohttp.ClientSession, base_url: str, paused_stream: str
) -> None:
    upper = paused_stream.upper()
    assert upper != paused_stream
    async with http.get(f"{base_url}/1/streams/{upper}", params={"account_id": ACCOUNT.upper()}) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["stream_id"] == paused_stream
    async with http.patch(f"{base_url}/1/streams/{upper}", json={"status": "pause"}) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["stream_id"] == paused_stream
    async with http.delete(f"{base_url}/1/streams/{upper}") as resp:
        assert resp.status == 204, await resp.text()
    async with http.get(f"{base_url}/1/streams/{paused_stream}") as resp:
        assert resp.status == 404


async def test_an_upper_case_stream_id_can_be_watched(facade: Service, paused_stream: str) -> None:
    uri = f"ws://{facade.address}/1/ws?stream_id={paused_stream.upper()}&account_id={ACCOUNT.upper()}"
    async with websockets.connect(uri) as websocket:
        first = json.loads(await websocket.recv())
    assert first["stream_status"] == "pause" and first["error"] is None, first


async def test_an_upper_case_stream_id_names_the_same_stream_over_grpc(
    core: Service, paused_stream: str
) -> None:
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = streams_pb2_grpc.StreamsServiceStub(channel)
        reply = await stub.GetStream(
            streams_pb2.GetStreamRequest(stream_id=paused_stream.upper(), account_id=ACCOUNT.upper())
        )
    assert reply.stream.stream_id == paused_stream and reply.stream.account_id == ACCOUNT


@pytest.mark.parametrize("spelling", NON_CANONICAL)
async def test_non_canonical_ids_are_refused_alike_everywhere(
    http: aiohttp.ClientSession, base_url: str, facade: Service, sample: Path, spelling: str
) -> None:
    some_stream = str(uuid.uuid4())
    # Creating: the body's account_id, 12027 with its path.
    body = file_stream(sample, [], status="pause", account_id=spelling)
    async with http.post(f"{base_url}/1/streams", json=body) as resp:
        assert resp.status == 400
        payload = await resp.json()
    assert_luna_error(payload, 12027)
    assert payload["path"] == "account_id"
    # Naming an object: 12012, for a stream id and for an account filter alike. PATCH with a bad
    # account was a 404 before, as if the id were fine and the stream missing.
    requests = [
        ("GET", f"/1/streams/{spelling}", {}),
        ("GET", f"/1/streams/{some_stream}", {"account_id": spelling}),
        ("GET", "/1/streams", {"account_id": spelling}),
        ("PATCH", f"/1/streams/{some_stream}", {"account_id": spelling}),
        ("DELETE", f"/1/streams/{some_stream}", {"account_id": spelling}),
    ]
    for method, path, params in requests:
        payload_json = {"status": "pause"} if method == "PATCH" else None
        async with http.request(method, f"{base_url}{path}", params=params, json=payload_json) as resp:
            assert resp.status == 400, (method, path, params, await resp.text())
            assert_luna_error(await resp.json(), 12012)
    for query in (f"stream_id={spelling}", f"stream_id={some_stream}&account_id={spelling}"):
        async with http.get(f"{base_url}/1/ws?{query}") as resp:
            assert resp.status == 400, query
            assert_luna_error(await resp.json(), 12012)


async def test_non_canonical_ids_over_grpc_are_invalid(core: Service) -> None:
    async with grpc.aio.insecure_channel(core.address) as channel:
        stub = streams_pb2_grpc.StreamsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetStream(streams_pb2.GetStreamRequest(stream_id=NON_CANONICAL[0]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = from_trailers(caught.value.trailing_metadata())
    assert error is not None and error.code == 12012
