"""pipeline_probe: one small event per frame, through a trivial model; the pipeline benchmark's analytic.

It measures the agent rather than a network: every sampled frame goes through the engine's
batched inference (its ``model`` role; the default configuration maps it to ``frame_stats``,
the trivial model that returns each image's mean RGB) and comes out as one event on the bus.
A stream with this analytic therefore exercises decode -> sample -> batch -> Triton ->
analytics -> event bus at almost no model cost, which is what ``benchmarks/`` needs to compare
the core's frames/s with bare decoding.

Each event carries ``decoded_at_wall``: when the frame was decoded, on the wall clock (seconds
since the epoch). A client on the same machine subtracts it from its own ``time.time()`` at
receipt to get the frame's decode-to-delivery latency. The frame's own timestamp is monotonic
(``Frame.decoded_at``), which means nothing outside the core's process, so it is shifted by the
current offset between the two clocks; the offset drifts by far less than the latencies measured.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from lva_core.analytics.base import Event, InferFn
from lva_core.analytics.validation import validate
from lva_core.pipeline.frame import Frame

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "pipeline_probe parameters",
    "description": "No parameters: every frame the stream samples is sent to the model and reported.",
    "type": "object",
    "additionalProperties": False,
    "properties": {},
}


def wall_time_of(monotonic_stamp: float) -> float:
    """A ``time.monotonic()`` stamp of this process as wall-clock time (seconds since the epoch)."""
    return time.time() - (time.monotonic() - monotonic_stamp)


class PipelineProbe:
    """The pipeline_probe analytic (see the module docstring)."""

    name = "pipeline_probe"
    version = "1.0.0"
    description = (
        "Benchmark probe: sends every sampled frame to its model (a trivial one by default, "
        "frame_stats) and emits one small event per frame with the model's mean RGB and the wall "
        "time the frame was decoded, so that a client can measure throughput and latency."
    )
    # "any": the probe reads whatever the model returns, so no contract constrains the model.
    roles: Mapping[str, str] = {"model": "any"}

    def parameters_schema(self) -> dict[str, Any]:
        # A copy: whoever renders or extends it must not change what validate uses.
        return copy.deepcopy(SCHEMA)

    def validate(self, parameters: Mapping[str, Any], path: str) -> dict[str, Any]:
        return validate(SCHEMA, parameters, path)

    def start(self, stream_id: str, parameters: Mapping[str, Any]) -> None:
        # Stateless: validated only so that bad parameters fail here as they would at create time.
        self.validate(parameters, "parameters")

    async def process(self, frame: Frame, state: None, infer: InferFn) -> list[Event]:
        # Taken before awaiting the model, so that the model's time stays inside the latency the
        # client measures (it is subtracted from Triton's own statistics, reported separately).
        decoded_at_wall = wall_time_of(frame.decoded_at)
        outputs = await infer("model", {"IMAGE": frame.pixels})
        mean = outputs.get("MEAN_RGB")
        mean_rgb = [round(float(v), 2) for v in np.asarray(mean).reshape(-1)] if mean is not None else []
        return [
            {
                "event_type": "pipeline_probe",
                "frame_number": frame.frame_number,
                "time_offset": frame.time_offset,
                "decoded_at_wall": decoded_at_wall,
                "mean_rgb": mean_rgb,
            }
        ]

    def stop(self, state: None) -> list[Event]:
        return []
