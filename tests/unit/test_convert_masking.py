"""Credentials never leave the core in a stream: its reference, its error and its last_error."""

from __future__ import annotations

from lva_core.api.convert import stream_to_proto
from lva_core.streams.record import StreamRecord
from lva_core.streams.spec import Autorestart, SourceData
from lva_core.streams.state import Status

REFERENCE = "rtsp://admin:hunter2@127.0.0.1:8554/cam?token=abc123"


def _camera(status: Status, error: str | None = None) -> StreamRecord:
    return StreamRecord(
        stream_id="00000000-0000-4000-8000-000000000001",
        account_id="",
        name="cam",
        description="",
        data=SourceData(REFERENCE, "stream"),
        analytics=[],
        autorestart=Autorestart(),
        status=status,
        error=error,
    )


def test_every_quotation_of_the_reference_is_masked() -> None:
    record = _camera(Status.RESTART, f"timeout: no data for 5.0 s from {REFERENCE}")
    record.statistics.last_error = f"people_counter: the model failed on a frame of {REFERENCE}"
    stream = stream_to_proto(record)
    text = str(stream)
    assert "hunter2" not in text and "abc123" not in text
    masked = "rtsp://***@127.0.0.1:8554/cam?token=***"
    assert stream.data.reference == masked
    assert stream.error == f"timeout: no data for 5.0 s from {masked}"
    assert stream.statistics.last_error == f"people_counter: the model failed on a frame of {masked}"


def test_a_stream_without_errors_has_none() -> None:
    stream = stream_to_proto(_camera(Status.PENDING))
    assert not stream.HasField("error") and not stream.statistics.HasField("last_error")
