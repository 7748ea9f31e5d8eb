"""MQTT: the LUNA envelope published to a topic, as Frigate and DL Streamer publish theirs.

With ``qos: 1`` an event counts as delivered once the broker acknowledged it (PUBACK); with
``qos: 0`` once it was written to the broker's connection (MQTT's own at-most-once: a broker
that dies then may lose it). ``mqtts://`` connects with TLS and the system's CAs; credentials
go in the URL (``mqtt://user:password@host:1883``) and are masked wherever the stream is shown.

All callbacks to one broker (same URL) share one connection (``MqttClients``); a connection
that fails is dropped and the next send opens a new one, so a broker that restarts is found
again by the delivery loop's retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt

from lva_common.config import mask_url
from lva_common.errors import invalid
from lva_core.delivery.sinks.base import DeliveryError, Message
from lva_core.delivery.sinks.urls import check_url, url_hosts

CONNECT_TIMEOUT = 5.0
MAX_TOPIC_BYTES = 65535  # MQTT's UTF-8 string limit

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "url", "topic"],
    "properties": {
        "type": {"const": "mqtt"},
        "url": {
            "type": "string",
            "maxLength": 2048,
            "description": "mqtt://[user:password@]host[:port] (1883), or mqtts:// for TLS (8883).",
        },
        "topic": {
            "type": "string",
            "minLength": 1,
            "description": "Topic the events are published to; no wildcards (+, #).",
        },
        "qos": {
            "enum": [0, 1],
            "default": 1,
            "description": "1: delivered once the broker acknowledged it; 0: once it was sent.",
        },
        "timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 60,
            "default": 5,
            "description": "Seconds the broker has to acknowledge; longer counts as a failure.",
        },
    },
}


class _Connection:
    """One open client to one broker."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        self.client = aiomqtt.Client(
            parts.hostname or "localhost",
            parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls_context=ssl.create_default_context() if tls else None,
            timeout=CONNECT_TIMEOUT,
        )
        self.open = False

    async def __aenter__(self) -> aiomqtt.Client:
        await self.client.__aenter__()
        self.open = True
        return self.client

    async def close(self) -> None:
        if self.open:
            self.open = False
            with contextlib.suppress(Exception):
                await self.client.__aexit__(None, None, None)
            # aiomqtt keeps the disconnection's reason in a future that only its own message
            # loop reads; retrieved here, so that a closed client logs no "never retrieved".
            gone = getattr(self.client, "_disconnected", None)
            if isinstance(gone, asyncio.Future) and gone.done() and not gone.cancelled():
                gone.exception()


class MqttClients:
    """The core's MQTT connections, one per broker URL, opened on first use."""

    def __init__(self) -> None:
        self._connections: dict[str, _Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def client(self, url: str) -> tuple[aiomqtt.Client, _Connection]:
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:  # one connect at a time per broker, however many lanes wait for it
            connection = self._connections.get(url)
            if connection is None or not connection.open:
                connection = _Connection(url)
                try:
                    await connection.__aenter__()
                except Exception as exc:
                    raise DeliveryError(f"cannot connect: {mask_url(str(exc))}"[:300]) from None
                self._connections[url] = connection
            return connection.client, connection

    async def drop(self, url: str, connection: _Connection) -> None:
        if self._connections.get(url) is connection:
            del self._connections[url]
        await connection.close()

    async def close(self) -> None:
        for connection in list(self._connections.values()):
            await connection.close()
        self._connections.clear()


class MqttSink:
    def __init__(self, clients: MqttClients, callback: Mapping[str, Any]) -> None:
        self.clients = clients
        self.url = str(callback["url"])
        self.topic = str(callback["topic"])
        self.qos = int(callback.get("qos", 1))
        self.timeout = float(callback.get("timeout", 5))

    async def send(self, message: Message) -> None:
        client, connection = await self.clients.client(self.url)
        try:
            await client.publish(self.topic, message.body, qos=self.qos, timeout=self.timeout)
        except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
            await self.clients.drop(self.url, connection)  # the next send connects again
            raise DeliveryError(f"publish failed: {mask_url(str(exc)) or type(exc).__name__}"[:300]) from None

    async def close(self) -> None:
        return None  # the connection is shared (MqttClients)


class MqttSinkType:
    name = "mqtt"
    secrets: tuple[str, ...] = ()  # the password sits in the URL, which is masked as a URL

    def __init__(self, clients: MqttClients | None = None) -> None:
        self.clients = clients or MqttClients()

    def schema(self) -> dict[str, Any]:
        return SCHEMA

    def check(self, callback: Mapping[str, Any], path: str) -> None:
        parts = check_url(str(callback["url"]), f"{path}.url", ("mqtt", "mqtts"))
        if parts.path not in ("", "/") or parts.query:
            raise invalid(f"{path}.url", "has a path or query; the topic goes in 'topic'")
        topic = str(callback["topic"])
        if "+" in topic or "#" in topic:
            raise invalid(f"{path}.topic", "wildcards (+, #) are for subscribing, not publishing")
        if "\x00" in topic:
            raise invalid(f"{path}.topic", "must not contain NUL")
        if topic.startswith("$"):
            raise invalid(f"{path}.topic", "topics starting with $ are the broker's")
        if len(topic.encode()) > MAX_TOPIC_BYTES:
            raise invalid(f"{path}.topic", f"is longer than MQTT's {MAX_TOPIC_BYTES} bytes")

    def hosts(self, callback: Mapping[str, Any]) -> list[str]:
        return url_hosts(str(callback["url"]))

    def target(self, callback: Mapping[str, Any]) -> str:
        return f"{mask_url(str(callback['url']))} {callback['topic']}"

    def open(self, callback: Mapping[str, Any]) -> MqttSink:
        return MqttSink(self.clients, callback)

    async def close(self) -> None:
        await self.clients.close()
