"""Isolated unit tests of the stream engine's parts: state machine, event bus, frame buffers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lva_common.errors import LunaError
from lva_core.events.bus import EventBus
from lva_core.pipeline.buffer import BufferStrategy, FrameBuffer
from lva_core.pipeline.worker import backoff
from lva_core.streams.state import TRANSITIONS, Status, can_transition, check_transition


def test_every_state_can_stop_and_only_stop_leads_to_pending_from_terminal_states() -> None:
    for status in Status:
        assert status is Status.STOP or can_transition(status, Status.STOP), status
    assert set(TRANSITIONS) == set(Status)
    assert not can_transition(Status.PAUSE, Status.IN_PROGRESS)  # resume goes through pending
    assert not can_transition(Status.DONE, Status.IN_PROGRESS)
    with pytest.raises(LunaError) as caught:
        check_transition(Status.STOP, Status.PAUSE)
    assert caught.value.code == 47005


def test_status_maps_to_proto_both_ways() -> None:
    from lva.v1 import streams_pb2
    from lva_core.api.convert import status_from_proto, status_to_proto

    for status in Status:
        assert status_from_proto(status_to_proto(status)) is status
    assert status_from_proto(streams_pb2.STREAM_STATUS_UNSPECIFIED) is None


def test_backoff_is_exponential_and_capped() -> None:
    assert [backoff(n, 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(20, 1.0) == 30.0
    assert backoff(1, 0.0) == 0.05  # never a busy loop


async def test_slow_subscriber_loses_oldest_and_is_told() -> None:
    bus = EventBus(queue_size=3)
    fast, slow = bus.subscribe("s"), bus.subscribe("s")
    received = []
    for index in range(10):
        bus.publish("s", {"n": index})
        delivery = await fast.get()
        assert delivery is not None
        received.append(delivery.message["n"])
    assert received == list(range(10))  # the fast one got everything, the slow one did not hold it up
    first = await slow.get()
    assert first is not None and first.message == {"n": 7} and first.lost == 7
    second = await slow.get()
    assert second is not None and second.lost == 0


async def test_closing_a_stream_ends_subscribers_after_the_final_message() -> None:
    bus = EventBus()
    subscription = bus.subscribe("s")
    bus.close_stream("s", {"final": True})
    delivery = await subscription.get()
    assert delivery is not None and delivery.message == {"final": True}
    assert await subscription.get() is None
    assert bus.subscriber_count("s") == 0


async def test_drop_oldest_buffer_keeps_the_newest_frames() -> None:
    buffer: FrameBuffer[int] = FrameBuffer(asyncio.get_running_loop(), 2, BufferStrategy.DROP_OLDEST)
    for index in range(10):
        assert buffer.put(index)
    assert buffer.dropped == 8
    assert [await buffer.get(), await buffer.get()] == [8, 9]


async def test_block_buffer_makes_the_producer_wait() -> None:
    buffer: FrameBuffer[int] = FrameBuffer(asyncio.get_running_loop(), 2, BufferStrategy.BLOCK)
    produced: list[int] = []

    def producer() -> None:
        for index in range(6):
            buffer.put(index)
            produced.append(index)

    thread = threading.Thread(target=producer)
    thread.start()
    # Two go in (however late the thread starts), then it stays blocked on the third.
    deadline = time.monotonic() + 5
    while len(produced) < 2:
        assert time.monotonic() < deadline, produced
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert len(produced) == 2 and thread.is_alive()  # blocked on the third
    got = [await buffer.get() for _ in range(6)]
    thread.join(2)
    assert got == list(range(6)) and buffer.dropped == 0


async def test_closed_buffer_releases_a_blocked_producer() -> None:
    buffer: FrameBuffer[int] = FrameBuffer(asyncio.get_running_loop(), 1, BufferStrategy.BLOCK)
    buffer.put(0)
    result: list[bool] = []
    putting = threading.Event()

    def producer() -> None:
        putting.set()
        result.append(buffer.put(1))

    thread = threading.Thread(target=producer)
    thread.start()
    assert await asyncio.to_thread(putting.wait, 5)
    await asyncio.sleep(0.1)
    assert result == [] and thread.is_alive()  # blocked on the full buffer, not yet closed
    buffer.close()
    thread.join(2)
    assert result == [False]


def test_restart_without_a_count_gets_the_default_attempts() -> None:
    from lva.v1 import streams_pb2
    from lva_core.api.convert import stream_spec_from_request
    from lva_core.streams.validation import validate_autorestart

    def checked(autorestart: streams_pb2.Autorestart) -> int:
        spec = stream_spec_from_request(streams_pb2.CreateStreamRequest(autorestart=autorestart))
        return validate_autorestart(spec.autorestart).attempt_count

    assert checked(streams_pb2.Autorestart(restart=1)) == 10
    assert checked(streams_pb2.Autorestart(restart=0)) == 0  # no restart asked: nothing filled in
    assert checked(streams_pb2.Autorestart(restart=1, attempt_count=3)) == 3
    assert validate_autorestart(None).attempt_count == 10  # none given: restart with the defaults


def test_whole_numbers_from_a_struct_are_validated_and_kept_as_integers() -> None:
    # A Struct turns the client's 300 into 300.0: messages and stored parameters must say 300.
    from google.protobuf import json_format, struct_pb2

    from lva.v1 import streams_pb2
    from lva_core.analytics.people_counter import PeopleCounter
    from lva_core.api.convert import integral, stream_spec_from_request
    from lva_core.streams.spec import AnalyticSpec
    from lva_core.streams.validation import validate_analytics

    def config(parameters: dict[str, object]) -> AnalyticSpec:
        struct = json_format.ParseDict(parameters, struct_pb2.Struct())
        request = streams_pb2.CreateStreamRequest(
            analytics=[streams_pb2.AnalyticConfig(analytic_name="people_counter", parameters=struct)]
        )
        return stream_spec_from_request(request).analytics[0]

    catalogue = {"people_counter": PeopleCounter()}
    with pytest.raises(LunaError) as caught:
        validate_analytics([config({"probe_count": 300})], catalogue)
    expected = "analytics[0].parameters.probe_count: 300 is greater than the maximum of 100"
    assert caught.value.detail == expected
    with pytest.raises(LunaError) as caught:
        validate_analytics([config({"probe_count": 2.5})], catalogue)
    assert "2.5 is not of type 'integer'" in caught.value.detail
    (spec,) = validate_analytics([config({"probe_count": 3, "score_threshold": 0.5})], catalogue)
    assert spec.parameters["probe_count"] == 3 and type(spec.parameters["probe_count"]) is int
    assert spec.parameters["score_threshold"] == 0.5
    # Nested values too; a double past 2**53 is no exact integer and stays a float.
    assert integral({"a": [1.0, {"b": -2.0}], "c": 1e300, "d": True, "e": "3.0"}) == {
        "a": [1, {"b": -2}],
        "c": 1e300,
        "d": True,
        "e": "3.0",
    }
    assert type(integral(1e300)) is float and type(integral(True)) is bool


def test_decode_rate_is_over_the_last_second_and_falls_to_zero_when_frames_stop() -> None:
    from lva_core.streams.rate import RateMeter

    meter, now = RateMeter(), 100.0
    assert meter.rate(now) == 0.0  # nothing yet
    for total in range(1, 76):  # 3 s at 25 frames a second
        now += 0.04
        meter.mark(now, total)
    assert meter.rate(now) == pytest.approx(25.0, abs=0.5)
    assert meter.rate(now + 0.5) == pytest.approx(12.5, abs=1.0)  # half a second without frames
    assert meter.rate(now + 1.01) == 0.0  # a frozen camera reads 0, not its last rate
    assert meter.rate(now + 9.0) == 0.0
    # Marks far apart (a keyframe-only source marks per packet anyway, but a slow one may not):
    # the frames between two marks are spread over the time between them.
    sparse = RateMeter()
    sparse.mark(0.0, 0)
    sparse.mark(2.0, 50)
    assert sparse.rate(2.5) == pytest.approx(25.0)
