"""A throw-away MQTT broker (Debian's ``mosquitto``, loopback, temporary directory) and its subscribers.

The event delivery tests publish to a real broker and take it away (:meth:`MosquittoBroker.stop`,
:meth:`~MosquittoBroker.kill`) and bring it back *on the same port*
(:meth:`~MosquittoBroker.start` again, or :meth:`~MosquittoBroker.restart`), which is how a
broker outage looks to a client that knows only the broker's URL.

Under root (CI), mosquitto drops its privileges to the ``mosquitto`` user *before* it opens its
log file (measured: "Unable to open log file ... for writing", and no broker, in a directory only
root may write). So the kit gives its directory to that user and says ``user mosquitto``, as
Debian's own service does; where no such account exists it says ``user root``, which mosquitto
takes as "do not drop privileges". Not under pytest's temporary directory: that one is private
to its user, and the broker's user must be able to enter it.

Sessions (``keep_sessions=True``) are saved to the directory when the broker stops cleanly and
read back when it starts again: a subscriber with a persistent session (the collectors of
this module have one) then gets the QoS 1 messages published while it had
not reconnected yet. Without it a restarted broker knows no subscriber, and what a client
publishes before the subscriber is back is dropped; a :meth:`~MosquittoBroker.kill` saves
nothing either way (it is a crash).

:class:`AsyncMqttCollector` (for pytest-asyncio tests) and :class:`MqttCollector` (its own thread
and event loop, for sync end-to-end tests whose core runs in another process) subscribe with
``aiomqtt`` and record every message with its ``time.monotonic()`` arrival: CLOCK_MONOTONIC is
the machine's, so a time taken in the core's process compares with it. Both reconnect and
subscribe again after an outage; :meth:`~MqttCollector.wait_subscribed` says when they are back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from lva_testkit.ports import LOOPBACK, address_in_use, free_port, listening_ports, port_open

__all__ = [
    "BROKER_USER",
    "AsyncMqttCollector",
    "MosquittoBroker",
    "MqttCollector",
    "MqttMessage",
    "mosquitto_binary",
]

BROKER_USER = "mosquitto"  # the account Debian's package creates
_DEBIAN_BINARY = "/usr/sbin/mosquitto"  # /usr/sbin is not on every PATH (not on a user's)
_PORT_ATTEMPTS = 5


def mosquitto_binary() -> str:
    """The path of the ``mosquitto`` broker; :class:`FileNotFoundError` with the fix if none."""
    found = shutil.which("mosquitto") or (_DEBIAN_BINARY if os.access(_DEBIAN_BINARY, os.X_OK) else None)
    if found is None:
        raise FileNotFoundError(
            "mosquitto is not installed: apt-get install -y --no-install-recommends mosquitto (.ci/run does)"
        )
    return found


def _run_as() -> str | None:
    """The ``user`` line's value: who the broker runs as when started by root (None: not root)."""
    if os.geteuid() != 0:
        return None  # mosquitto ignores ``user`` then; say nothing
    try:
        pwd.getpwnam(BROKER_USER)
    except KeyError:
        return "root"
    return BROKER_USER


class MosquittoBroker:
    """One broker on ``127.0.0.1:port``; :meth:`start` it, use :attr:`url`, :meth:`close` it.

    ``port=0`` picks a free port on the first start and keeps it for every later start, so a
    stopped broker comes back where its clients expect it. Also a context manager (start on
    entry, close on exit).
    """

    def __init__(self, port: int = 0, *, keep_sessions: bool = False, binary: str | None = None) -> None:
        self.port = port
        self.keep_sessions = keep_sessions
        self.binary = binary or mosquitto_binary()
        self.root = Path(tempfile.mkdtemp(prefix="lva-mqtt-"))
        self.starts = 0  # how many times a broker process came up (a restart adds one)
        self._process: subprocess.Popen[bytes] | None = None
        self._user = _run_as()
        if self._user == BROKER_USER:
            owner = pwd.getpwnam(BROKER_USER)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)

    # -- where -------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``, what the product's MQTT sink is configured with."""
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "mosquitto.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        """The broker's log and what it wrote to stderr before its log was open (both appended)."""
        parts = []
        for path in (self.root / "stderr.log", self.log_path):
            try:
                parts.append(path.read_text(errors="replace"))
            except OSError:
                continue
        return "\n".join(parts)

    # -- life --------------------------------------------------------------------------------------

    def start(self, timeout: float = 10) -> None:
        """Start the broker and return once it accepts TCP connections on :attr:`port`.

        The first start of a ``port=0`` broker tries fresh ports while the chosen one turns out
        taken (see :mod:`lva_testkit.ports`); a later start must get the same port back, and
        fails if another process took it in between.
        """
        if self.running:
            raise RuntimeError(f"the broker is already running on port {self.port}")
        if self.port:
            self._start_on(self.port, timeout)
            return
        for _ in range(_PORT_ATTEMPTS):
            self.port = free_port()
            try:
                self._start_on(self.port, timeout)
                return
            except _PortTaken:
                self.port = 0
        raise RuntimeError(f"mosquitto found no free port:\n{self.log_text()[-3000:]}")

    def stop(self, timeout: float = 5) -> None:
        """Stop the broker cleanly (SIGTERM, which saves kept sessions), SIGKILL if it lingers."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        self._wait_closed()

    def kill(self) -> None:
        """A crash: SIGKILL, nothing saved; clients see their connections reset."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        self._process = None
        self._wait_closed()

    def restart(self, down_for: float = 0.0, *, crash: bool = False, timeout: float = 10) -> None:
        """An outage of ``down_for`` seconds: stop (or kill, ``crash=True``), wait, start on the same port."""
        if crash:
            self.kill()
        else:
            self.stop()
        if down_for > 0:
            time.sleep(down_for)
        self.start(timeout)

    def close(self) -> None:
        """Stop the broker and remove its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- inside ------------------------------------------------------------------------------------

    def _config(self, port: int) -> str:
        lines = [
            f"listener {port} {LOOPBACK}",
            "allow_anonymous true",
            f"log_dest file {self.log_path}",
            # connection/subscribe lines say when a client came (back): what a failed test needs
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if self.keep_sessions:
            # Saved on a clean stop and read at start; trailing slash: mosquitto joins by concatenation.
            lines += ["persistence true", f"persistence_location {self.root}/", "autosave_interval 0"]
        else:
            lines.append("persistence false")
        if self._user is not None:
            lines.append(f"user {self._user}")
        return "\n".join(lines) + "\n"

    def _start_on(self, port: int, timeout: float) -> None:
        config = self.root / "mosquitto.conf"
        config.write_text(self._config(port))
        with (self.root / "stderr.log").open("ab") as stderr:
            process = subprocess.Popen(
                [self.binary, "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,  # a Ctrl-C of the test run is not the broker's to handle
            )
        self._process = process
        deadline = time.monotonic() + timeout
        # Its own listening socket, not just "something answers": another process may own the port.
        while port not in listening_ports(process.pid):
            if process.poll() is not None:
                self._process = None
                log = self.log_text()
                if address_in_use(log[-500:]):
                    raise _PortTaken(port)
                raise RuntimeError(f"mosquitto exited with {process.returncode}:\n{log[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(
                    f"mosquitto did not listen on {port} in {timeout} s:\n{self.log_text()[-3000:]}"
                )
            time.sleep(0.005)
        while not port_open(port):  # listening, so at once; kept as the promise of this method
            time.sleep(0.005)
        self.starts += 1

    def _wait_closed(self, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while self.port and port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.01)


class _PortTaken(RuntimeError):
    """The chosen port was taken between its choice and the broker's bind."""

    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} is taken by another process")


# -- subscribers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttMessage:
    """One message as a subscriber got it."""

    topic: str
    payload: bytes
    qos: int  # the delivery's QoS: the lower of the publisher's and the subscription's
    retain: bool
    arrived: float  # time.monotonic() when the collector took it from the client

    def json(self) -> Any:
        return json.loads(self.payload)


def _broker_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ValueError(f"not an mqtt://host:port URL: {url!r}")
    return parts.hostname, parts.port or 1883


def _as_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


class _Recording:
    """What a collector saw, written by its event loop and read from any thread."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._messages: list[MqttMessage] = []
        self.subscriptions = 0  # each (re)connection that got its SUBACK adds one
        self.last_error: str | None = None

    def add(self, message: MqttMessage) -> None:
        with self._changed:
            self._messages.append(message)
            self._changed.notify_all()

    def subscribed(self) -> None:
        with self._changed:
            self.subscriptions += 1
            self._changed.notify_all()

    def failed(self, error: str) -> None:
        with self._changed:
            self.last_error = error
            self._changed.notify_all()

    def messages(self) -> list[MqttMessage]:
        with self._changed:
            return list(self._messages)

    def clear(self) -> None:
        with self._changed:
            self._messages.clear()

    def count(self) -> int:
        with self._changed:
            return len(self._messages)

    def wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(ready, timeout)

    def describe(self) -> str:
        with self._changed:
            return (
                f"{len(self._messages)} message(s), {self.subscriptions} subscription(s),"
                f" last error {self.last_error!r}"
            )


async def _poll(ready: Callable[[], bool], timeout: float) -> bool:
    # Polling, not a Condition: the waiter's loop is not always the recorder's. Arrival times are
    # taken on arrival, so the 5 ms of polling never shows in what a test measures.
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True


class AsyncMqttCollector:
    """Subscribes to ``topic`` (wildcards allowed) at ``url`` and records what arrives.

    Runs in the event loop that starts it; ``async with`` starts and stops it. The session is
    persistent (``clean_session=False``, a unique client id) so that a broker started with
    ``keep_sessions=True`` queues QoS 1 messages for it while it reconnects.
    """

    def __init__(
        self,
        url: str,
        topic: str = "#",
        *,
        qos: int = 1,
        retry_interval: float = 0.05,
        _record: _Recording | None = None,
    ) -> None:
        self.host, self.port = _broker_address(url)
        self.topic = topic
        self.qos = qos
        self.retry_interval = retry_interval
        self.identifier = f"lva-collector-{uuid.uuid4().hex[:12]}"
        self._record = _record or _Recording()
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 10) -> None:
        """Connect and subscribe; returns once the broker acknowledged the subscription."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.identifier)
        if not await _poll(lambda: self._record.subscriptions > 0, timeout):
            await self.stop()
            raise TimeoutError(f"no subscription to {self.topic!r} in {timeout} s: {self._record.describe()}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def messages(self) -> list[MqttMessage]:
        """Every message so far, in arrival order (a copy)."""
        return self._record.messages()

    def clear(self) -> None:
        self._record.clear()

    @property
    def subscriptions(self) -> int:
        """How many times the collector got a subscription: 1, plus 1 after each outage."""
        return self._record.subscriptions

    async def wait_for(self, count: int, timeout: float = 10) -> list[MqttMessage]:
        """The messages once there are at least ``count``; :class:`TimeoutError` otherwise."""
        if not await _poll(lambda: self._record.count() >= count, timeout):
            raise TimeoutError(f"wanted {count} message(s) in {timeout} s, got {self._record.describe()}")
        return self.messages()

    async def wait_subscribed(self, count: int, timeout: float = 10) -> None:
        """Wait for the ``count``-th subscription (2: back after the first outage)."""
        if not await _poll(lambda: self._record.subscriptions >= count, timeout):
            raise TimeoutError(f"wanted subscription {count} in {timeout} s: {self._record.describe()}")

    async def __aenter__(self) -> AsyncMqttCollector:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=self.identifier, clean_session=False, timeout=5
                ) as client:
                    await client.subscribe(self.topic, qos=self.qos)
                    self._record.subscribed()
                    async for message in client.messages:
                        self._record.add(
                            MqttMessage(
                                topic=message.topic.value,
                                payload=_as_bytes(message.payload),
                                qos=message.qos,
                                retain=message.retain,
                                arrived=time.monotonic(),
                            )
                        )
            except aiomqtt.MqttError as error:  # refused, or the broker went away: try again
                self._record.failed(f"{type(error).__name__}: {error}")
            await asyncio.sleep(self.retry_interval)


class MqttCollector:
    """:class:`AsyncMqttCollector` in its own thread and event loop, driven with blocking calls.

    For sync tests (the core in another process): ``with MqttCollector(broker.url, "lva/#") as c:``
    then ``c.wait_for(3)``. Also safe to read from async tests (:meth:`messages`), but do not
    block their loop with :meth:`wait_for` while the code under test runs in it.
    """

    def __init__(self, url: str, topic: str = "#", *, qos: int = 1, retry_interval: float = 0.05) -> None:
        _broker_address(url)  # a bad URL fails here, not in the thread
        self.url = url
        self.topic = topic
        self.qos = qos
        self.retry_interval = retry_interval
        self._record = _Recording()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._collector: AsyncMqttCollector | None = None

    def start(self, timeout: float = 10) -> None:
        """Start the thread, connect and subscribe; returns once the subscription is acknowledged."""
        if self._loop is not None:
            raise RuntimeError("the collector is already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"mqtt-collector {self.topic}", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._begin(timeout), loop).result(timeout + 5)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        collector, self._collector = self._collector, None
        if collector is not None:
            asyncio.run_coroutine_threadsafe(collector.stop(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        loop.close()
        self._loop = self._thread = None

    def messages(self) -> list[MqttMessage]:
        """Every message so far, in arrival order (a copy)."""
        return self._record.messages()

    def clear(self) -> None:
        self._record.clear()

    @property
    def subscriptions(self) -> int:
        """How many times the collector got a subscription: 1, plus 1 after each outage."""
        return self._record.subscriptions

    def wait_for(self, count: int, timeout: float = 10) -> list[MqttMessage]:
        """The messages once there are at least ``count``; :class:`TimeoutError` otherwise."""
        if not self._record.wait(lambda: self._record.count() >= count, timeout):
            raise TimeoutError(f"wanted {count} message(s) in {timeout} s, got {self._record.describe()}")
        return self.messages()

    def wait_subscribed(self, count: int, timeout: float = 10) -> None:
        """Wait for the ``count``-th subscription (2: back after the first outage)."""
        if not self._record.wait(lambda: self._record.subscriptions >= count, timeout):
            raise TimeoutError(f"wanted subscription {count} in {timeout} s: {self._record.describe()}")

    def __enter__(self) -> MqttCollector:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def _begin(self, timeout: float) -> None:
        self._collector = AsyncMqttCollector(
            self.url, self.topic, qos=self.qos, retry_interval=self.retry_interval, _record=self._record
        )
        await self._collector.start(timeout)
