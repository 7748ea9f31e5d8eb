"""A stream as a database row, the one mapping every SQL store shares.

The settings are kept as the contract's proto messages in their wire format (``data``,
``autorestart``, converted by ``lva_core/api/convert.py``), which the proto's compatibility rules
already protect, and the validated analytics as JSON. Live statistics are not kept.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from lva.v1 import streams_pb2
from lva_core.api.convert import (
    autorestart_from_proto,
    autorestart_to_proto,
    source_data_from_proto,
    source_data_to_proto,
)
from lva_core.streams.record import StreamRecord
from lva_core.streams.spec import AnalyticSpec
from lva_core.streams.state import Status


class Row(Protocol):
    """A row read by column name: sqlite3.Row and asyncpg.Record both are."""

    def __getitem__(self, key: str, /) -> Any: ...


# The columns of to_row, in its order.
COLUMNS = (
    "stream_id, account_id, name, description, data, analytics, autorestart, status, error, "
    "create_time, last_update_time"
)


def to_row(record: StreamRecord) -> tuple[Any, ...]:
    analytics = json.dumps([{"name": s.name, "parameters": s.parameters} for s in record.analytics])
    return (
        record.stream_id,
        record.account_id,
        record.name,
        record.description,
        source_data_to_proto(record.data).SerializeToString(),
        analytics,
        autorestart_to_proto(record.autorestart).SerializeToString(),
        record.status.value,
        record.error,
        record.create_time,
        record.last_update_time,
    )


def from_row(row: Row) -> StreamRecord:
    """A record from a row of COLUMNS."""
    data = streams_pb2.StreamData()
    data.ParseFromString(row["data"])
    autorestart = streams_pb2.Autorestart()
    autorestart.ParseFromString(row["autorestart"])
    analytics = [AnalyticSpec(str(a["name"]), dict(a["parameters"])) for a in json.loads(row["analytics"])]
    return StreamRecord(
        stream_id=row["stream_id"],
        account_id=row["account_id"],
        name=row["name"],
        description=row["description"],
        data=source_data_from_proto(data),
        analytics=analytics,
        autorestart=autorestart_from_proto(autorestart),
        status=Status(row["status"]),
        error=row["error"],
        create_time=float(row["create_time"]),
        last_update_time=float(row["last_update_time"]),
    )
