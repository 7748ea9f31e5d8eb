"""A real HTTP webhook receiver (aiohttp) that records every POST and misbehaves on request.

It runs in its own thread and event loop, so a sync end-to-end test (the core in another
process) and an async test (the sender in the test's own loop) drive it alike; every method is
a short blocking call, safe from any thread, except :meth:`WebhookReceiver.wait_for_async`.

How it answers is switched at run time (:meth:`~WebhookReceiver.ok`, :meth:`~WebhookReceiver.error`,
:meth:`~WebhookReceiver.hang`, :meth:`~WebhookReceiver.slow`), each optionally for the next
``times`` requests only, which is how a test says "fail twice, then accept" without racing the
sender's retries. A request takes the mode in force when it *arrives*.

:meth:`~WebhookReceiver.down` is an outage: the listening socket *and every open connection*
close; a sender's pooled keep-alive connection would otherwise go on delivering to a "down"
receiver. A request over a pooled connection whose close the sender has not noticed yet fails
with "server disconnected", any other with "connection refused": while down, the port stays
bound without listening, so no other process can take it, and :meth:`~WebhookReceiver.up`
listens on it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from lva_testkit.ports import LOOPBACK

__all__ = [
    "SIGNATURE_HEADER",
    "Mode",
    "WebhookReceiver",
    "WebhookRequest",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER = "X-LVA-Signature"
_SIGNATURE_SCHEME = "sha256="
# How long a stop or down() lets answers in progress finish before it cuts their connections
# (aiohttp waits it twice for a hung one). Not 0: aiohttp reads 0 as "no limit".
_SHUTDOWN_GRACE_S = 0.05
_CALL_TIMEOUT_S = 15

Mode = Literal["ok", "error", "hang", "slow"]
T = TypeVar("T")


def sign(body: bytes, secret: str | bytes) -> str:
    """The ``X-LVA-Signature`` value of ``body``: ``sha256=<hex of HMAC-SHA256(secret, body)>``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return _SIGNATURE_SCHEME + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header_value: str | None, secret: str | bytes) -> bool:
    """Whether ``header_value`` is the signature of the *raw* ``body`` under ``secret``.

    Compared in constant time, as a real receiver must; a missing header or another scheme is
    simply not valid.
    """
    if not header_value or not header_value.startswith(_SIGNATURE_SCHEME):
        return False
    return hmac.compare_digest(header_value.strip().lower(), sign(body, secret))


@dataclass(frozen=True)
class WebhookRequest:
    """One POST as it arrived."""

    path: str
    query: str
    headers: CIMultiDictProxy[str]  # case-insensitive: headers["x-lva-signature"] works
    body: bytes  # the raw bytes, what a signature is computed over
    json: Any  # the parsed body, None when it is not JSON
    arrived: float  # time.monotonic() (the machine's clock: comparable across processes)
    mode: Mode  # how the receiver was to answer it
    status: int | None  # the status it was to be answered with (None: never, it hung)

    @property
    def event_id(self) -> str:
        """``body["event"]["event_id"]``; :class:`ValueError` naming the body when absent."""
        try:
            return str(self.json["event"]["event_id"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"no event.event_id in the POST to {self.path}: {self.body[:300]!r}") from error

    def signed_by(self, secret: str | bytes) -> bool:
        return verify_signature(self.body, self.headers.get(SIGNATURE_HEADER), secret)


@dataclass
class _Behaviour:
    mode: Mode = "ok"
    status: int = 200
    delay: float = 0.0
    times: int | None = None  # None: until changed


class WebhookReceiver:
    """Listens on ``127.0.0.1:port`` (0: a free one, kept across :meth:`down`/:meth:`up`).

    ``start()`` / ``stop()``, or use it as a context manager.
    """

    def __init__(self, port: int = 0) -> None:
        self._requested_port = port
        self.port = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._requests: list[WebhookRequest] = []
        self._behaviour = _Behaviour()
        self._after = _Behaviour()  # what follows a behaviour given for a number of requests
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None  # bound all along; listening while up

    # -- where -------------------------------------------------------------------------------------

    def url(self, path: str = "/events") -> str:
        if not self.port:
            raise RuntimeError("the receiver is not started")
        return f"http://{LOOPBACK}:{self.port}{path}"

    @property
    def is_up(self) -> bool:
        return self._runner is not None

    # -- life --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread and listen; returns once connections are accepted."""
        if self._loop is not None:
            raise RuntimeError("the receiver is already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Binding again over the TIME_WAIT connections of a previous receiver on a fixed port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, self._requested_port))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"webhook-receiver :{self.port}", daemon=True
        )
        self._thread.start()
        self.up()

    def stop(self) -> None:
        """Close every connection (hung requests get no answer) and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self.down()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_CALL_TIMEOUT_S)
        loop.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._loop = self._thread = None

    def down(self) -> None:
        """An outage: refuse connections and close the open ones, until :meth:`up`."""
        if self._runner is not None:
            self._call(self._down())

    def up(self) -> None:
        """Listen again, on the same port."""
        if self._runner is None:
            self._call(self._up())

    def __enter__(self) -> WebhookReceiver:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- behaviour ---------------------------------------------------------------------------------

    def ok(self, status: int = 200, *, times: int | None = None) -> None:
        """Accept: answer ``status`` (200 or 204) at once."""
        self._set(_Behaviour("ok", status, 0.0, times))

    def error(self, status: int = 500, *, times: int | None = None) -> None:
        """Refuse: answer ``status`` (a 5xx the sender should retry, a 4xx it should not)."""
        self._set(_Behaviour("error", status, 0.0, times))

    def hang(self, *, times: int | None = None) -> None:
        """Read the request, never answer: until the sender gives up, or :meth:`down` / :meth:`stop`."""
        self._set(_Behaviour("hang", 0, 0.0, times))

    def slow(self, delay: float, status: int = 200, *, times: int | None = None) -> None:
        """Answer ``status`` after ``delay`` seconds (beyond the sender's timeout: its timeout path)."""
        self._set(_Behaviour("slow", status, delay, times))

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._behaviour.mode

    # -- what arrived ------------------------------------------------------------------------------

    def received(self) -> list[WebhookRequest]:
        """Every POST so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def event_ids(self) -> list[str]:
        """``body["event"]["event_id"]`` of each POST, in arrival order (retries included)."""
        return [request.event_id for request in self.received()]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for(self, count: int, timeout: float = 10) -> list[WebhookRequest]:
        """The POSTs once there are at least ``count``; :class:`TimeoutError` otherwise."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"wanted {count} POST(s) in {timeout} s, got {len(self._requests)}")
            return list(self._requests)

    async def wait_for_async(self, count: int, timeout: float = 10) -> list[WebhookRequest]:
        """:meth:`wait_for` for a test whose sender runs in the test's own event loop."""
        deadline = time.monotonic() + timeout
        # Polled: blocking on the Condition would stop the very loop that has to send.
        while True:
            received = self.received()
            if len(received) >= count:
                return received
            if time.monotonic() >= deadline:
                raise TimeoutError(f"wanted {count} POST(s) in {timeout} s, got {len(received)}")
            await asyncio.sleep(0.005)

    # -- inside ------------------------------------------------------------------------------------

    def _set(self, behaviour: _Behaviour) -> None:
        with self._lock:
            if behaviour.times is None:
                self._behaviour = self._after = behaviour
            else:
                self._behaviour = behaviour  # for `times` requests, then back to what was in force
                if self._after.times is not None:
                    self._after = _Behaviour()

    def _take_behaviour(self) -> _Behaviour:
        # Under the lock: the choice of this request's answer and its record are one step.
        current = self._behaviour
        if current.times is not None:
            current.times -= 1
            if current.times <= 0:
                self._behaviour = self._after
        return current

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the receiver is not started")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_CALL_TIMEOUT_S)

    async def _up(self) -> None:
        assert self._sock is not None
        self._sock.listen(128)
        app = web.Application(client_max_size=64 * 1024 * 1024)  # event images ride in the body
        app.router.add_post("/{tail:.*}", self._handle)
        # handler_cancellation: a sender that gives up ends its hung request here too.
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_GRACE_S,
        )
        await runner.setup()
        # On the receiver's own bound socket: the server closes it when it stops, and _rebind()
        # binds the port again at once, so between down() and up() no one else can take it.
        site = web.SockSite(runner, self._sock)
        await site.start()
        self._runner = runner

    async def _down(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._rebind()

    def _rebind(self) -> None:
        # A socket bound and not listening: connections are refused, and the port stays ours.
        old = self._sock
        if old is not None and old.fileno() != -1:
            old.close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self.port))
        self._sock = sock

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        arrived = time.monotonic()
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = None
        with self._arrived:
            behaviour = self._take_behaviour()
            mode, status, delay = behaviour.mode, behaviour.status, behaviour.delay
            self._requests.append(
                WebhookRequest(
                    path=request.path,
                    query=request.query_string,
                    headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                    body=body,
                    json=parsed,
                    arrived=arrived,
                    mode=mode,
                    status=None if mode == "hang" else status,
                )
            )
            self._arrived.notify_all()
        if mode == "hang":
            # Forever: aiohttp cancels it when the sender disconnects (handler_cancellation) or,
            # after the grace, when down()/stop() shuts the server, and closes without an answer.
            await asyncio.get_running_loop().create_future()
        if mode == "slow":
            await asyncio.sleep(delay)
        return web.Response(status=status)
