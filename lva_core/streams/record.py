"""A stream as the registry keeps it: what the user created, plus status and live statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from lva.v1 import streams_pb2
from lva_common.config import mask_url
from lva_core.streams.state import Status, check_transition


@dataclass
class Statistics:
    frames_decoded: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    decode_fps: float = 0.0
    frame_age: float = 0.0
    reconnects: int = 0
    last_error: str | None = None


@dataclass
class AnalyticSpec:
    name: str
    parameters: dict[str, Any]  # validated, defaults filled in


@dataclass
class StreamRecord:
    stream_id: str
    account_id: str
    name: str
    description: str
    data: streams_pb2.StreamData
    analytics: list[AnalyticSpec]
    autorestart: streams_pb2.Autorestart
    status: Status
    error: str | None = None
    create_time: float = field(default_factory=time.time)
    last_update_time: float = field(default_factory=time.time)
    statistics: Statistics = field(default_factory=Statistics)

    def transition(self, target: Status, error: str | None = None) -> None:
        check_transition(self.status, target)
        self.status = target
        self.error = error
        self.last_update_time = time.time()

    def to_proto(self) -> streams_pb2.Stream:
        stats = self.statistics
        data = streams_pb2.StreamData()
        data.CopyFrom(self.data)
        data.reference = mask_url(data.reference)  # credentials never leave the core
        stream = streams_pb2.Stream(
            stream_id=self.stream_id,
            account_id=self.account_id,
            name=self.name,
            description=self.description,
            data=data,
            autorestart=self.autorestart,
            status=self.status.proto,  # type: ignore[arg-type]
            create_time=_timestamp(self.create_time),
            last_update_time=_timestamp(self.last_update_time),
            statistics=streams_pb2.StreamStatistics(
                frames_decoded=stats.frames_decoded,
                frames_processed=stats.frames_processed,
                frames_dropped=stats.frames_dropped,
                decode_fps=round(stats.decode_fps, 2),
                frame_age=round(stats.frame_age, 4),
                reconnects=stats.reconnects,
                last_error=stats.last_error,
            ),
        )
        for spec in self.analytics:
            parameters = struct_pb2.Struct()
            parameters.update(spec.parameters)
            stream.analytics.add(analytic_name=spec.name, parameters=parameters)
        if self.error is not None:
            stream.error = self.error
        return stream


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
