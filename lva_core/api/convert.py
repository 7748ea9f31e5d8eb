"""Protobuf <-> domain, in one place: the servicers call these, and nothing below them sees a
wire type.

Presence is kept both ways: an absent ``roi``, ``rate`` or ``autorestart`` is ``None`` in the
domain and absent again on the way out, and an unspecified enum stays unspecified, so a stream
reads back exactly as the client sent it (after validation's defaults). The stream store keeps
``data`` and ``autorestart`` in the contract's wire format, through the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from lva.v1 import streams_pb2
from lva_common.config import mask_reference, mask_url
from lva_core.delivery.callbacks import PARAMETER as CALLBACKS
from lva_core.delivery.callbacks import mask_callbacks
from lva_core.delivery.lane import LaneStats
from lva_core.delivery.sinks.base import SinkType
from lva_core.events.messages import StreamEvent
from lva_core.streams.record import StreamRecord
from lva_core.streams.spec import (
    AnalyticSpec,
    Autorestart,
    Rate,
    RateUnit,
    Roi,
    RoiMode,
    SourceData,
    SourceKind,
    StreamSpec,
)
from lva_core.streams.state import Status

_KINDS: dict[int, SourceKind] = {
    streams_pb2.SOURCE_TYPE_STREAM: "stream",
    streams_pb2.SOURCE_TYPE_VIDEOFILE: "videofile",
}
_ROI_MODES: dict[int, RoiMode] = {streams_pb2.ROI_MODE_ABS: "abs", streams_pb2.ROI_MODE_PERCENT: "percent"}
_RATE_UNITS: dict[int, RateUnit] = {
    streams_pb2.RATE_UNIT_FRAME: "frame",
    streams_pb2.RATE_UNIT_SECOND: "second",
}


def _inverse(table: Mapping[Any, str]) -> dict[str, Any]:
    return {name: value for value, name in table.items()}


_KIND_VALUES, _ROI_VALUES, _UNIT_VALUES = _inverse(_KINDS), _inverse(_ROI_MODES), _inverse(_RATE_UNITS)


# ---- status -----------------------------------------------------------------------------------


def status_to_proto(status: Status) -> streams_pb2.StreamStatus.ValueType:
    return streams_pb2.StreamStatus.Value(f"STREAM_STATUS_{status.name}")


def status_from_proto(value: int) -> Status | None:
    """The domain status; None for STREAM_STATUS_UNSPECIFIED (not given)."""
    if value == streams_pb2.STREAM_STATUS_UNSPECIFIED:
        return None
    name = streams_pb2.StreamStatus.Name(streams_pb2.StreamStatus.ValueType(value))
    return Status[name.removeprefix("STREAM_STATUS_")]


# ---- data and autorestart ---------------------------------------------------------------------


def source_data_from_proto(data: streams_pb2.StreamData) -> SourceData:
    roi = None
    if data.HasField("roi"):
        r = data.roi
        roi = Roi(r.x, r.y, r.width, r.height, _ROI_MODES.get(r.mode))
    rate = None
    if data.frame_processing.HasField("rate"):
        rate = Rate(data.frame_processing.rate.period, _RATE_UNITS.get(data.frame_processing.rate.unit))
    return SourceData(
        reference=data.reference,
        kind=_KINDS.get(data.type),
        rotation=data.rotation,
        roi=roi,
        rate=rate,
    )


def source_data_to_proto(data: SourceData) -> streams_pb2.StreamData:
    message = streams_pb2.StreamData(
        reference=data.reference,
        type=_KIND_VALUES[data.kind] if data.kind else streams_pb2.SOURCE_TYPE_UNSPECIFIED,
        rotation=data.rotation,
    )
    if data.roi is not None:
        roi = data.roi
        message.roi.CopyFrom(
            streams_pb2.Roi(
                x=roi.x,
                y=roi.y,
                width=roi.width,
                height=roi.height,
                mode=_ROI_VALUES[roi.mode] if roi.mode else streams_pb2.ROI_MODE_UNSPECIFIED,
            )
        )
    if data.rate is not None:
        message.frame_processing.rate.CopyFrom(
            streams_pb2.Rate(
                period=data.rate.period,
                unit=_UNIT_VALUES[data.rate.unit] if data.rate.unit else streams_pb2.RATE_UNIT_UNSPECIFIED,
            )
        )
    return message


def autorestart_from_proto(message: streams_pb2.Autorestart) -> Autorestart:
    return Autorestart(message.restart, message.attempt_count, message.delay)


def autorestart_to_proto(autorestart: Autorestart) -> streams_pb2.Autorestart:
    return streams_pb2.Autorestart(
        restart=autorestart.restart, attempt_count=autorestart.attempt_count, delay=autorestart.delay
    )


# ---- parameters -------------------------------------------------------------------------------


def integral(value: Any) -> Any:
    """``value`` with every whole float that a double holds exactly turned into an int.

    A protobuf Struct keeps every number as a double, so the ``3`` a client sent arrives as
    ``3.0``: validation messages would quote ``300.0 is greater than the maximum of 100`` and the
    analytics would get floats for their integer parameters. Struct cannot tell 3 from 3.0; the
    integer is what JSON clients send. Beyond 2**53 a double is not an exact integer: it stays a
    float.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [integral(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    """A Struct's value as plain Python. Not json_format: it raises on the infinities a gRPC
    client can send, which validation must answer with the field's path instead."""
    if isinstance(value, struct_pb2.Struct):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, struct_pb2.ListValue):
        return [_plain(item) for item in value]
    return value


def parameters_from_struct(parameters: struct_pb2.Struct) -> dict[str, Any]:
    result: dict[str, Any] = integral(_plain(parameters))
    return result


def struct_from(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


# ---- streams ----------------------------------------------------------------------------------


def stream_spec_from_request(request: streams_pb2.CreateStreamRequest) -> StreamSpec:
    return StreamSpec(
        data=source_data_from_proto(request.data) if request.HasField("data") else None,
        account_id=request.account_id,
        name=request.name,
        description=request.description,
        analytics=tuple(
            AnalyticSpec(config.analytic_name, parameters_from_struct(config.parameters))
            for config in request.analytics
        ),
        autorestart=autorestart_from_proto(request.autorestart) if request.HasField("autorestart") else None,
        status=status_from_proto(request.status),
    )


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def callback_statistics(path: str, stats: LaneStats, reference: str) -> streams_pb2.CallbackStatistics:
    shown = streams_pb2.CallbackStatistics(
        callback=path,
        type=stats.kind,
        target=stats.target,  # masked by its sink type
        delivered=stats.delivered,
        pending=stats.pending,
        failed=stats.failed,
        dropped=stats.dropped,
    )
    if stats.last_error is not None:
        shown.last_error = mask_reference(stats.last_error, reference)
    return shown


def stream_to_proto(
    record: StreamRecord,
    callbacks: Sequence[tuple[str, LaneStats]] = (),
    sinks: Mapping[str, SinkType] | None = None,
) -> streams_pb2.Stream:
    """The stream as the API shows it; ``callbacks``: its delivery statistics, in order;
    ``sinks``: the sink types, whose ``secrets`` fields are masked too."""
    stats = record.statistics
    data = source_data_to_proto(record.data)
    data.reference = mask_url(data.reference)  # credentials never leave the core
    stream = streams_pb2.Stream(
        stream_id=record.stream_id,
        account_id=record.account_id,
        name=record.name,
        description=record.description,
        data=data,
        autorestart=autorestart_to_proto(record.autorestart),
        status=status_to_proto(record.status),
        create_time=_timestamp(record.create_time),
        last_update_time=_timestamp(record.last_update_time),
        # Who runs it: an agent that ran a stream now paused or ended runs nothing.
        agent_id=record.owner.agent_id if record.owner is not None and record.status.active else "",
        statistics=streams_pb2.StreamStatistics(
            frames_decoded=stats.frames_decoded,
            frames_processed=stats.frames_processed,
            frames_dropped=stats.frames_dropped,
            decode_fps=round(stats.decode_fps, 2),
            frame_age=round(stats.frame_age, 4),
            reconnects=stats.reconnects,
            # Inference errors name no reference today; masked anyway, at the one exit.
            last_error=mask_reference(stats.last_error, record.data.reference) if stats.last_error else None,
            callbacks=[callback_statistics(path, each, record.data.reference) for path, each in callbacks],
        ),
    )
    for spec in record.analytics:
        parameters = spec.parameters
        if parameters.get(CALLBACKS):
            # A callback's secret, credential headers and URL credentials never leave the core.
            parameters = {**parameters, CALLBACKS: mask_callbacks(parameters[CALLBACKS], sinks)}
        stream.analytics.add(analytic_name=spec.name, parameters=struct_from(parameters))
    if record.error is not None:
        stream.error = mask_reference(record.error, record.data.reference)
    return stream


def watch_response(event: StreamEvent, lost: int) -> streams_pb2.WatchStreamResponse:
    response = streams_pb2.WatchStreamResponse(
        stream_status=status_to_proto(event.status),
        analytics_results=struct_from(event.results),
        lost_messages=lost,
    )
    if event.error is not None:
        response.error = event.error
    return response
