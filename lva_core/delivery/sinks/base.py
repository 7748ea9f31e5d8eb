"""The one interface every transport of outbound events implements.

A sink type is found through the ``lva.sinks`` entry-point group (like analytics), so Kafka,
NATS or a user's own receiver is one small class in a plugin. The delivery loop knows no
transport: it hands a sink the envelope's bytes and learns whether the receiver took them.

A sink type:

1. describes the callback's fields with a JSON schema (``schema``), shown in the analytics
   catalogue and enforced when a stream is created, and checks what a schema cannot
   (``check``: a URL's scheme, an MQTT topic) with LunaError(BAD_JSON) naming the field;
2. lists what must never be shown (``secrets``: masked in every answer and never logged);
3. builds one ``Sink`` per callback of a stream (``open``), which ``send``s one event at a time:
   returning means the receiver accepted it; raising ``DeliveryError`` means it did not (the
   event stays in the outbox and is retried).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class DeliveryError(Exception):
    """The receiver did not take the event; the message says why (never with credentials)."""


@dataclass(frozen=True)
class Message:
    """One event as a sink sends it."""

    event_id: str  # the idempotency key: the same event retried carries the same id
    body: bytes  # the LUNA envelope, JSON


class Sink(Protocol):
    async def send(self, message: Message) -> None:
        """Deliver one event; raise DeliveryError when the receiver did not accept it."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...


class SinkType(Protocol):
    # The callback's "type" value: "http", "mqtt".
    name: str

    def schema(self) -> dict[str, Any]:
        """JSON schema (draft 2020-12) of one callback of this type, with defaults."""
        ...

    def check(self, callback: Mapping[str, Any], path: str) -> None:
        """Checks beyond the schema; raise LunaError(BAD_JSON) naming ``path`` + field."""
        ...

    def hosts(self, callback: Mapping[str, Any]) -> list[str]:
        """The host names the callback reaches, checked for resolving when a stream is created."""
        ...

    def target(self, callback: Mapping[str, Any]) -> str:
        """Where it delivers, for statistics and logs, with any credentials masked."""
        ...

    # Fields whose values are secrets (masked wherever streams are shown, never logged).
    secrets: tuple[str, ...]

    def open(self, callback: Mapping[str, Any]) -> Sink:
        """A sink for one validated callback; connects lazily, on the first send."""
        ...

    async def close(self) -> None:
        """Release what the type's sinks share (connection pools); at shutdown."""
        ...
