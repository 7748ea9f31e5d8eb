"""What docs/streams.md and docs/security.md promise a gRPC client of the core, over a real channel.

``WatchStream``: the current status first, then every message of the bus, the final ``stop``
on delete (and the end of the watch), NOT_FOUND (47004) and INVALID_ARGUMENT (12012). The
per-account rate limit of stream creation applies to ``CreateStream`` itself, not only to the
facade's route.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeAlias

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from lva.v1 import streams_pb2, streams_pb2_grpc
from lva_testkit.clips import clip
from lva_testkit.documented import luna_error
from lva_testkit.stack import Service, start_core

S = streams_pb2


@pytest.fixture
async def stub(core: Service) -> AsyncIterator[streams_pb2_grpc.StreamsServiceAsyncStub]:
    async with grpc.aio.insecure_channel(core.address) as channel:
        yield streams_pb2_grpc.StreamsServiceStub(channel)


def _file_request(path: Path, account_id: str = "") -> streams_pb2.CreateStreamRequest:
    parameters = struct_pb2.Struct()
    # An event on every sampled frame whatever the count, so the watch surely sees events.
    parameters.update(
        {
            "probe_count": 1,
            "people_count_threshold": 0,
            "rate": {"period": 1, "unit": "frame"},
            "event_policy": {"trigger": "period", "interval": 0.01},
        }
    )
    return S.CreateStreamRequest(
        account_id=account_id,
        name="watched",
        data=S.StreamData(
            reference=str(path),
            type=S.SOURCE_TYPE_VIDEOFILE,
            frame_processing=S.FrameProcessing(rate=S.Rate(period=5, unit=S.RATE_UNIT_FRAME)),
        ),
        analytics=[S.AnalyticConfig(analytic_name="people_counter", parameters=parameters)],
        status=S.STREAM_STATUS_PAUSE,
    )


# Subscriptable only in the stubs, hence the string alias.
Watch: TypeAlias = "grpc.aio.UnaryStreamCall[streams_pb2.WatchStreamRequest, streams_pb2.WatchStreamResponse]"


async def _next(call: Watch) -> streams_pb2.WatchStreamResponse:
    """The watch's next message; the test fails if the watch ended instead."""
    message = await call.read()
    assert isinstance(message, streams_pb2.WatchStreamResponse), message
    return message


async def _delete(stub: streams_pb2_grpc.StreamsServiceAsyncStub, stream_id: str) -> None:
    try:
        await stub.DeleteStream(S.DeleteStreamRequest(stream_id=stream_id))
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND  # already deleted by the test


async def test_watch_stream_sends_the_status_then_every_message_then_stop(
    stub: streams_pb2_grpc.StreamsServiceAsyncStub, tmp_path: Path
) -> None:
    created = await stub.CreateStream(_file_request(clip(tmp_path, seconds=1.0)))
    stream_id = created.stream_id
    try:
        call = stub.WatchStream(S.WatchStreamRequest(stream_id=stream_id))
        first = await _next(call)
        assert first.stream_status == S.STREAM_STATUS_PAUSE
        assert not first.HasField("error") and len(first.analytics_results.fields) == 0
        await stub.UpdateStream(S.UpdateStreamRequest(stream_id=stream_id, status=S.STREAM_STATUS_PENDING))
        seen: list[streams_pb2.WatchStreamResponse] = [first]
        async with asyncio.timeout(120):
            while seen[-1].stream_status != S.STREAM_STATUS_DONE:
                seen.append(await _next(call))
        status_changes = [m.stream_status for m in seen if not m.analytics_results.fields]
        assert status_changes == [
            S.STREAM_STATUS_PAUSE,
            S.STREAM_STATUS_PENDING,
            S.STREAM_STATUS_IN_PROGRESS,
            S.STREAM_STATUS_DONE,
        ]
        events = [json_format.MessageToDict(m.analytics_results) for m in seen if m.analytics_results.fields]
        assert events, "no analytics event came over the watch"
        assert all(list(e) == ["people_counter"] for e in events)
        assert all(e["people_counter"]["event_type"] == "crowd" for e in events)
        assert all(m.stream_status == S.STREAM_STATUS_IN_PROGRESS for m in seen if m.analytics_results.fields)
        assert all(m.lost_messages == 0 for m in seen)
        # A done file does not end the watch; deleting the stream does, after one stop message.
        await stub.DeleteStream(S.DeleteStreamRequest(stream_id=stream_id))
        async with asyncio.timeout(30):
            final = await _next(call)
            assert final.stream_status == S.STREAM_STATUS_STOP
            assert final.error == "stream deleted"
            assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    finally:
        await _delete(stub, stream_id)


async def test_watch_stream_refuses_missing_foreign_and_malformed_ids(
    stub: streams_pb2_grpc.StreamsServiceAsyncStub, tmp_path: Path
) -> None:
    owner = str(uuid.uuid4())
    created = await stub.CreateStream(_file_request(clip(tmp_path, seconds=1.0), owner))
    try:
        cases = [
            (S.WatchStreamRequest(stream_id=str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND, 47004),
            (
                S.WatchStreamRequest(stream_id=created.stream_id, account_id=str(uuid.uuid4())),
                grpc.StatusCode.NOT_FOUND,
                47004,
            ),
            (S.WatchStreamRequest(stream_id="not-a-uuid"), grpc.StatusCode.INVALID_ARGUMENT, 12012),
        ]
        for request, code, luna in cases:
            call = stub.WatchStream(request)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() == code, request
            assert luna_error(caught.value).code == luna, request
        # The owner's account finds it.
        call = stub.WatchStream(S.WatchStreamRequest(stream_id=created.stream_id, account_id=owner))
        assert (await _next(call)).stream_status == S.STREAM_STATUS_PAUSE
        call.cancel()
    finally:
        await _delete(stub, created.stream_id)


@pytest.fixture(scope="module")
def limited_core(log_dir: Path, triton: Service) -> Iterator[Service]:
    """A core of its own with a tiny creation budget: the session's core serves other tests."""
    service = start_core(
        log_dir, triton.address, {"LVA_STREAMS__CREATE_RATE": "{per_second: 0.01, burst: 2}"}
    )
    try:
        yield service
    finally:
        service.stop()


async def test_create_stream_over_grpc_is_rate_limited_per_account(limited_core: Service) -> None:
    busy, other = str(uuid.uuid4()), str(uuid.uuid4())
    paused = S.CreateStreamRequest(
        data=S.StreamData(reference="rtsp://127.0.0.1:1/cam"), status=S.STREAM_STATUS_PAUSE
    )
    created: list[str] = []
    async with grpc.aio.insecure_channel(limited_core.address) as channel:
        stub = streams_pb2_grpc.StreamsServiceStub(channel)
        try:
            for _ in range(2):  # the burst
                request = S.CreateStreamRequest()
                request.CopyFrom(paused)
                request.account_id = busy
                created.append((await stub.CreateStream(request)).stream_id)
            request = S.CreateStreamRequest()
            request.CopyFrom(paused)
            request.account_id = busy
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateStream(request)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            error = luna_error(caught.value)
            assert error.code == 47011
            # At 0.01 per second an empty bucket has about 100 s to wait for its next token.
            retry_after = error.extra["retry_after"]
            assert isinstance(retry_after, float) and 90 < retry_after <= 100
            assert f"retry in {retry_after:.2f} s" in error.detail
            # The limit is per account: another one still has its whole burst.
            request.account_id = other
            created.append((await stub.CreateStream(request)).stream_id)
            listed = await stub.ListStreams(S.ListStreamsRequest(account_id=busy))
            assert listed.count == 2  # the refused creation registered nothing
        finally:
            for stream_id in created:
                await _delete(stub, stream_id)
