"""Webhooks: one POST of the LUNA envelope per event.

2xx means delivered; anything else (a status, a refused connection, a timeout) is a failure
that the delivery loop retries with backoff. The request carries the event's id twice, as
``Idempotency-Key`` (the IETF draft's header) and ``X-LVA-Event-Id``, so that a receiver can
drop the duplicate an at-least-once retry may bring. With a ``secret``, ``X-LVA-Signature:
sha256=<hex HMAC-SHA256 of the raw body>`` lets it check who sent it.

All webhooks of the core share one connection pool (``HttpClients``): keep-alive connections
to a receiver are reused across events and streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import aiohttp

from lva_common.config import mask_url
from lva_common.errors import invalid
from lva_core.delivery.sinks.base import DeliveryError, Message
from lva_core.delivery.sinks.urls import check_url, url_hosts

SIGNATURE_HEADER = "X-LVA-Signature"
# Headers the sink sets itself: a callback's own headers cannot replace them.
_RESERVED = {
    "content-type",
    "content-length",
    "host",
    "idempotency-key",
    "x-lva-event-id",
    SIGNATURE_HEADER.lower(),
}
_TOKEN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"  # an HTTP header name (RFC 9110 token)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "url"],
    "properties": {
        "type": {"const": "http"},
        "url": {
            "type": "string",
            "maxLength": 2048,
            "description": "http:// or https:// URL the events are POSTed to.",
        },
        "headers": {
            "type": "object",
            "maxProperties": 32,
            "propertyNames": {"pattern": _TOKEN, "maxLength": 128},
            "additionalProperties": {"type": "string", "maxLength": 4096, "pattern": "^[^\\r\\n]*$"},
            "default": {},
            "description": (
                "Extra request headers (for example Authorization). Values of headers that look "
                "like credentials are masked wherever the stream is shown."
            ),
        },
        "timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 60,
            "default": 5,
            "description": "Seconds a receiver has to answer; a slower answer counts as a failure.",
        },
        "secret": {
            "type": "string",
            "minLength": 1,
            "maxLength": 256,
            "description": (
                "Signs every request: X-LVA-Signature: sha256=<hex HMAC-SHA256 of the body with "
                "this secret>. Never shown: masked in every answer."
            ),
        },
    },
}


def sign(body: bytes, secret: str) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class HttpClients:
    """The core's one aiohttp session for webhooks, created on first use, closed at shutdown."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # limit_per_host bounds what one receiver can hold; streams' lanes to it queue up.
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=32)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpSink:
    def __init__(self, clients: HttpClients, callback: Mapping[str, Any]) -> None:
        self.clients = clients
        self.url = str(callback["url"])
        self.headers = {str(k): str(v) for k, v in (callback.get("headers") or {}).items()}
        self.timeout = aiohttp.ClientTimeout(total=float(callback.get("timeout", 5)))
        self.secret = callback.get("secret")

    async def send(self, message: Message) -> None:
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": message.event_id,
            "X-LVA-Event-Id": message.event_id,
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(message.body, str(self.secret))
        try:
            async with self.clients.session().post(
                self.url, data=message.body, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as response:
                if not 200 <= response.status < 300:
                    raise DeliveryError(f"HTTP {response.status} {response.reason or ''}".rstrip())
                await response.read()  # the connection goes back to the pool only once read
        except TimeoutError:
            raise DeliveryError(f"no answer within {self.timeout.total:g} s") from None
        except (aiohttp.ClientError, ValueError) as exc:
            # aiohttp's messages quote the URL: mask its credentials.
            raise DeliveryError(f"{type(exc).__name__}: {mask_url(str(exc))}"[:300]) from None
        except asyncio.CancelledError:
            raise

    async def close(self) -> None:
        return None  # the session is the core's (HttpClients)


class HttpSinkType:
    name = "http"
    secrets = ("secret",)

    def __init__(self, clients: HttpClients | None = None) -> None:
        self.clients = clients or HttpClients()

    def schema(self) -> dict[str, Any]:
        return SCHEMA

    def check(self, callback: Mapping[str, Any], path: str) -> None:
        parts = check_url(str(callback["url"]), f"{path}.url", ("http", "https"))
        for name in callback.get("headers") or {}:
            if str(name).lower() in _RESERVED:
                raise invalid(f"{path}.headers.{name}", "is set by the agent itself")
            if str(name).lower() == "authorization" and (parts.username or parts.password):
                # aiohttp would refuse every request: basic auth from the URL, or this header.
                raise invalid(f"{path}.headers.{name}", "cannot be combined with credentials in the URL")

    def hosts(self, callback: Mapping[str, Any]) -> list[str]:
        return url_hosts(str(callback["url"]))

    def target(self, callback: Mapping[str, Any]) -> str:
        return mask_url(str(callback["url"]))

    def open(self, callback: Mapping[str, Any]) -> HttpSink:
        return HttpSink(self.clients, callback)

    async def close(self) -> None:
        await self.clients.close()
