"""LUNA's callback envelope around one analytics event.

``{"event_type", "account_id", "event_create_time", "event_end_time", "event": {...}}``: the
event itself goes under ``event`` with what LUNA's receivers read there (``stream_id``,
``event_id``, ``track_id``, ``location``; ``people_count`` and ``overview`` for a crowd), and
every other field the analytic produced. It is serialised once per event, whatever the
number of callbacks: the outbox stores these bytes and every retry sends the same ones.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# Keys the envelope carries outside ``event``.
_OUTER = ("event_type", "event_create_time", "event_end_time")


def envelope(account_id: str, stream_id: str, analytic: str, event: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope of ``event`` from ``analytic`` of stream ``stream_id`` of ``account_id``.

    An event that names no ``event_id`` (a plugin's, the probe's) gets one, and one with no
    time gets now: a receiver's de-duplication and ordering need both.

    An event that ends something (a track's ``end``) has an end time: now, when it was made;
    a momentary one (a crowd's start) has none, as in LUNA.
    """
    created = event.get("event_create_time") or datetime.now(UTC).isoformat()
    ended = event.get("event_end_time")
    if ended is None and event.get("phase") == "end":
        ended = created
    inner = {key: value for key, value in event.items() if key not in _OUTER}
    inner["event_id"] = str(inner.get("event_id") or uuid.uuid4())
    inner.setdefault("stream_id", stream_id)
    inner.setdefault("track_id", None)
    inner.setdefault("location", None)
    return {
        "event_type": event.get("event_type", analytic),
        "account_id": account_id or None,
        "event_create_time": created,
        "event_end_time": ended,
        "event": inner,
    }


def encode(body: Mapping[str, Any]) -> bytes:
    """The bytes every callback of the event gets."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
