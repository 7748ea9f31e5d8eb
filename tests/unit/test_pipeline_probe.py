"""Unit tests of the pipeline_probe analytic, with a fake ``infer`` in the frame_stats shape."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from lva_common.errors import BAD_JSON, LunaError
from lva_core.analytics.pipeline_probe import PipelineProbe, wall_time_of
from lva_core.analytics.validation import check_schema
from lva_core.pipeline.frame import Frame
from lva_core.pipeline.pixels import Pixels

STREAM = "6d1b0f5e-8c1a-4a53-9a49-0b7d6c3c2f10"


class FrameStats:
    """Answers as the frame_stats model does: the image's mean RGB and a count of 1."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, np.ndarray[Any, Any]]]] = []

    async def __call__(self, role: str, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
        self.calls.append((role, dict(inputs)))
        image = inputs["IMAGE"]
        image = image.rgb() if isinstance(image, Pixels) else image
        return {
            "MEAN_RGB": image.mean(axis=(0, 1), dtype=np.float64).astype(np.float32),
            "COUNT": np.array([1], np.int32),
        }


def frame(number: int, decoded_at: float, color: tuple[int, int, int] = (10, 20, 30)) -> Frame:
    image = np.empty((36, 64, 3), np.uint8)
    image[...] = color
    return Frame(
        stream_id=STREAM,
        pixels=image,
        frame_number=number,
        time_offset=number / 25,
        decoded_at=decoded_at,
        source_size=(64, 36),
    )


def test_schema_is_an_empty_closed_object() -> None:
    probe = PipelineProbe()
    schema = probe.parameters_schema()
    check_schema(schema)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["properties"] == {}
    assert probe.validate({}, "analytics[0].parameters") == {}
    assert probe.name == "pipeline_probe" and dict(probe.roles) == {"model": "any"}
    # The copy handed out is not the one validate uses.
    schema["additionalProperties"] = True
    assert probe.parameters_schema()["additionalProperties"] is False


def test_unknown_parameters_are_refused_with_their_path() -> None:
    with pytest.raises(LunaError) as caught:
        PipelineProbe().validate({"rate": 1}, "analytics[2].parameters")
    assert caught.value.spec is BAD_JSON
    assert caught.value.detail.startswith("analytics[2].parameters.rate:")


async def test_every_frame_goes_to_the_model_role_and_yields_one_event() -> None:
    probe, infer = PipelineProbe(), FrameStats()
    state = probe.start(STREAM, {})
    events = []
    for number in range(5):
        events += await probe.process(
            frame(number, time.monotonic(), (number, 2 * number, 250)), state, infer
        )
    assert [role for role, _ in infer.calls] == ["model"] * 5
    assert all(set(inputs) == {"IMAGE"} for _, inputs in infer.calls)
    assert [e["frame_number"] for e in events] == [0, 1, 2, 3, 4]
    assert [e["time_offset"] for e in events] == [n / 25 for n in range(5)]
    assert events[3]["mean_rgb"] == [3.0, 6.0, 250.0]
    assert all(e["event_type"] == "pipeline_probe" for e in events)
    assert set(events[0]) == {"event_type", "frame_number", "time_offset", "decoded_at_wall", "mean_rgb"}
    # Small and JSON-able: it travels through protobuf Struct and the WebSocket.
    assert len(json.dumps(events[0])) < 200
    assert probe.stop(state) == []


async def test_decoded_at_wall_is_the_decode_time_on_the_wall_clock() -> None:
    probe = PipelineProbe()
    decoded = time.monotonic() - 0.25  # decoded a quarter of a second ago
    before = time.time()
    (event,) = await probe.process(frame(0, decoded), probe.start(STREAM, {}), FrameStats())
    age = time.time() - event["decoded_at_wall"]
    assert 0.25 - 0.001 <= age < 0.25 + (time.time() - before) + 0.001  # slack: clock rounding only
    # Now on the monotonic clock is now on the wall clock: bracketed by two wall-clock reads, not
    # held to a fixed 10 ms that a preempted test process could overrun. The slack is for the two
    # clocks' rounding, not for time passing.
    earliest = time.time()
    converted = wall_time_of(time.monotonic())
    latest = time.time()
    assert earliest - 0.001 <= converted <= latest + 0.001, (earliest, converted, latest)


async def test_a_model_without_mean_rgb_still_yields_the_event() -> None:
    async def other_model(role: str, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
        return {"COUNT": np.array([0], np.int32)}

    probe = PipelineProbe()
    (event,) = await probe.process(frame(7, time.monotonic()), probe.start(STREAM, {}), other_model)
    assert event["frame_number"] == 7 and event["mean_rgb"] == []
