"""Delivery's pure parts and one lane on a real SQLite outbox with a scripted sink.

The transports themselves are tested against a real receiver and a real mosquitto in
tests/e2e/test_delivery.py; here the sink is a stand-in, so that failures come exactly when
a test says.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lva_common.errors import LunaError
from lva_core.delivery.callbacks import check_hosts, discover_sinks, mask_callbacks, validate_callbacks
from lva_core.delivery.envelope import encode, envelope
from lva_core.delivery.lane import LaneRunner, LaneStats
from lva_core.delivery.outbox import Entry, Lane
from lva_core.delivery.settings import DeliverySettings
from lva_core.delivery.sinks.base import DeliveryError, Message
from lva_core.delivery.sinks.http import sign
from lva_core.delivery.sqlite_outbox import SqliteOutbox
from lva_core.streams.store.sqlite import SqliteStreamStore

SINKS = discover_sinks()
FAST = DeliverySettings(initial_backoff=0.01, max_backoff=0.02, scan_interval=0.05)


class ScriptedSink:
    """Fails the first ``failures`` sends, hangs while ``hang`` is set; records what it got."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.got: list[str] = []
        self.attempts = 0
        self.hang = asyncio.Event()

    async def send(self, message: Message) -> None:
        self.attempts += 1
        while self.hang.is_set():
            await asyncio.sleep(0.01)
        if self.failures > 0:
            self.failures -= 1
            raise DeliveryError("HTTP 500 Internal Server Error")
        self.got.append(message.event_id)

    async def close(self) -> None:
        return None


@pytest.fixture
async def outbox() -> AsyncIterator[SqliteOutbox]:
    store = SqliteStreamStore()
    yield SqliteOutbox(store)
    await store.close()


def append(outbox: SqliteOutbox, runner: LaneRunner, event_id: str, created: float | None = None) -> Any:
    runner.stats.pending += 1
    written = outbox.append(Entry(runner.lane, event_id, b"{}", created or time.time()), 100)

    async def done() -> None:
        runner.appended(await written)

    return asyncio.ensure_future(done())


async def until(predicate: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_backoff_doubles_and_is_capped() -> None:
    settings = DeliverySettings(initial_backoff=0.5, max_backoff=4)
    assert [settings.backoff(n) for n in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]
    with pytest.raises(ValueError, match="max_pending"):
        DeliverySettings.from_config({"delivery": {"max_pending": 0}})
    assert DeliverySettings.from_config({"delivery": {"max_backoff": "2"}}).max_backoff == 2.0


def test_the_envelope_is_luna_s() -> None:
    crowd = {
        "event_type": "crowd",
        "event_id": "e1",
        "stream_id": "s1",
        "event_create_time": "2026-12-02T00:00:00+00:00",
        "people_count": 2,
        "overview": {"people_coordinates": [[1, 2], [3, 4]], "image": "/1/images/x", "time_offset": 1.5},
    }
    body = envelope("acc", "s1", "people_counter", crowd)
    assert body == {
        "event_type": "crowd",
        "account_id": "acc",
        "event_create_time": "2026-12-02T00:00:00+00:00",
        "event_end_time": None,
        "event": {
            "event_id": "e1",
            "stream_id": "s1",
            "people_count": 2,
            "overview": crowd["overview"],
            "track_id": None,
            "location": None,
        },
    }
    track_end = {"event_type": "human_tracking", "event_id": "e2", "track_id": "t", "phase": "end",
                 "event_create_time": "T"}  # fmt: skip
    ended = envelope("", "s2", "human_tracking", track_end)
    assert (
        ended["event_end_time"] == "T" and ended["event"]["track_id"] == "t" and ended["account_id"] is None
    )
    assert ended["event"]["stream_id"] == "s2"
    # A plugin's event with neither id nor time gets both: receivers de-duplicate and order by them.
    bare = envelope("", "s3", "pipeline_probe", {"mean": 0.5})
    assert bare["event_type"] == "pipeline_probe" and bare["event"]["mean"] == 0.5
    assert len(bare["event"]["event_id"]) == 36 and bare["event_create_time"].endswith("+00:00")
    assert bare["event"]["stream_id"] == "s3"
    assert json.loads(encode(body)) == body
    with pytest.raises(ValueError):
        encode({"x": float("nan")})  # never sent as the non-JSON NaN


@pytest.mark.parametrize(
    ("callbacks", "path", "words"),
    [
        ([{"type": "http", "url": "ftp://x/y"}], "p[0].url", "scheme must be http or https"),
        ([{"type": "http", "url": "http:///nohost"}], "p[0].url", "has no host"),
        ([{"type": "http", "url": "http://h:0/"}], "p[0].url", "port 0"),
        ([{"type": "http", "url": "http://h/", "timeout": 61}], "p[0].timeout", "maximum"),
        (
            [{"type": "http", "url": "http://h/", "headers": {"X-LVA-Signature": "x"}}],
            "p[0].headers.X-LVA-Signature",
            "set by the agent",
        ),
        ([{"type": "http", "url": "http://h/", "headers": {"bad name": "x"}}], "p[0].headers", ""),
        ([{"type": "http", "url": "http://h/", "extra": 1}], "p[0].extra", "unknown parameter"),
        (
            [{"type": "http", "url": "http://u:p@h/", "headers": {"Authorization": "Bearer x"}}],
            "p[0].headers.Authorization",
            "cannot be combined with credentials in the URL",
        ),
        ([{"type": "mqtt", "url": "mqtt://h", "topic": "a/+/b"}], "p[0].topic", "wildcards"),
        ([{"type": "mqtt", "url": "mqtt://h", "topic": "$SYS/x"}], "p[0].topic", "broker's"),
        ([{"type": "mqtt", "url": "mqtt://h/path", "topic": "t"}], "p[0].url", "path or query"),
        ([{"type": "mqtt", "url": "mqtt://h", "topic": "t", "qos": 2}], "p[0].qos", ""),
        ([{"url": "http://h/"}], "p[0].type", "required"),
        ([{"type": "smtp"}], "p[0].type", "unknown callback type 'smtp' (known: http, mqtt)"),
        (["http://h/"], "p[0]", "must be an object"),
        ([{"type": "http", "url": "http://h/"}] * 11, "p", "at most 10 callbacks, not 11"),
        ("http://h/", "p", "must be a list"),
    ],
)
def test_bad_callbacks_name_their_field(callbacks: Any, path: str, words: str) -> None:
    with pytest.raises(LunaError) as raised:
        validate_callbacks(callbacks, SINKS, "p")
    assert raised.value.detail.startswith(f"{path}:"), raised.value.detail
    assert words in raised.value.detail


def test_good_callbacks_get_their_defaults_and_are_masked_when_shown() -> None:
    checked = validate_callbacks(
        [
            {
                "type": "http",
                "url": "https://u:pw@h/x",
                "secret": "k",
                "headers": {"X-Api-Key": "t", "X-Site": "a"},
            },
            {"type": "mqtt", "url": "mqtt://user:pw@broker:1884", "topic": "lva/events"},
        ],
        SINKS,
        "p",
    )
    assert checked[0]["timeout"] == 5 and checked[1]["qos"] == 1 and checked[1]["timeout"] == 5
    shown = mask_callbacks(checked, SINKS)
    assert shown[0]["secret"] == "***" and shown[0]["headers"] == {"X-Api-Key": "***", "X-Site": "a"}
    assert shown[0]["url"] == "https://***@h/x" and shown[1]["url"] == "mqtt://***@broker:1884"
    assert checked[0]["secret"] == "k"  # masking copies; what is delivered keeps the secret
    assert SINKS["mqtt"].target(checked[1]) == "mqtt://***@broker:1884 lva/events"
    # A plugin's own secret fields are masked by name, whatever the name.
    plugin = mask_callbacks([{"type": "vault", "dsn": "x"}], {"vault": PluginSink()})
    assert plugin == [{"type": "vault", "dsn": "***"}]
    assert (
        mask_callbacks([{"type": "http", "headers": {"Cookie": "session=1"}}])[0]["headers"]["Cookie"]
        == "***"
    )


class PluginSink:
    name = "vault"
    secrets = ("dsn",)


async def test_a_host_that_does_not_resolve_is_refused_and_literal_addresses_pass() -> None:
    await check_hosts([("p[0]", {"type": "http", "url": "http://127.0.0.1:9/x"})], SINKS)
    await check_hosts([("p[0]", {"type": "http", "url": "http://localhost:9/x"})], SINKS)
    with pytest.raises(LunaError, match=r"p\[1\].url: host 'nowhere.invalid' does not resolve"):
        await check_hosts([("p[1]", {"type": "mqtt", "url": "mqtt://nowhere.invalid", "topic": "t"})], SINKS)


def test_the_signature_is_hmac_sha256_of_the_body() -> None:
    # RFC 4231's test case 2.
    digest = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert sign(b"what do ya want for nothing?", "Jefe") == f"sha256={digest}"


async def test_a_lane_delivers_in_order_through_failures(outbox: SqliteOutbox) -> None:
    sink = ScriptedSink(failures=3)
    runner = LaneRunner(Lane("s", "c0"), sink, LaneStats("http", "t"), outbox, FAST)
    runner.start()
    try:
        await asyncio.gather(*(append(outbox, runner, f"e{i}") for i in range(10)))
        await until(lambda: len(sink.got) == 10)
        assert sink.got == [f"e{i}" for i in range(10)]
        assert (runner.stats.delivered, runner.stats.failed, runner.stats.pending) == (10, 3, 0)
        assert runner.stats.last_error == "HTTP 500 Internal Server Error"
        for _ in range(100):  # the last ack is written just after the last send
            if not await outbox.lanes():
                break
            await asyncio.sleep(0.01)
        assert await outbox.lanes() == {}
    finally:
        await runner.stop()


async def test_an_event_older_than_max_age_is_dropped_not_sent(outbox: SqliteOutbox) -> None:
    sink = ScriptedSink(failures=1000)
    settings = DeliverySettings(initial_backoff=0.01, max_backoff=0.02, scan_interval=0.05, max_age=0.3)
    runner = LaneRunner(Lane("s", "c0"), sink, LaneStats("http", "t"), outbox, settings)
    await append(outbox, runner, "old", created=time.time() - 10)  # expired before any attempt
    await append(outbox, runner, "young")
    runner.start()
    try:
        await until(lambda: runner.stats.dropped == 2, timeout=5)  # young expires while retried
        assert sink.got == [] and runner.stats.pending == 0
        assert await outbox.lanes() == {}
    finally:
        await runner.stop()


async def test_a_hanging_lane_holds_up_no_other_lane(outbox: SqliteOutbox) -> None:
    stuck, healthy = ScriptedSink(), ScriptedSink()
    stuck.hang.set()
    lanes = [
        LaneRunner(Lane("s", "c0"), stuck, LaneStats("http", "a"), outbox, FAST),
        LaneRunner(Lane("s", "c1"), healthy, LaneStats("http", "b"), outbox, FAST),
    ]
    for runner in lanes:
        runner.start()
    try:
        for i in range(5):
            await append(outbox, lanes[0], f"a{i}")
            await append(outbox, lanes[1], f"b{i}")
        await until(lambda: len(healthy.got) == 5)
        assert stuck.got == [] and lanes[0].stats.pending == 5
        stuck.hang.clear()
        await until(lambda: len(stuck.got) == 5)
        assert stuck.got == [f"a{i}" for i in range(5)]
    finally:
        for runner in lanes:
            await runner.stop()


class StoppedAsItSends(ScriptedSink):
    """Asks for its lane's stop as the last thing a send does: the cancel lands as it returns."""

    runner: LaneRunner | None = None

    async def send(self, message: Message) -> None:
        await super().send(message)
        assert self.runner is not None and self.runner.task is not None
        asyncio.get_running_loop().call_soon(self.runner.task.cancel)


async def test_a_lane_stops_when_cancelled_as_a_send_returns(outbox: SqliteOutbox) -> None:
    """With Python 3.11's asyncio.wait_for around the send this cancel was swallowed, and the
    lane's stop() (a stream's deletion, the core's shutdown) waited forever."""
    sink = StoppedAsItSends()
    runner = LaneRunner(Lane("s", "c0"), sink, LaneStats("http", "a"), outbox, FAST)
    sink.runner = runner
    runner.start()
    await append(outbox, runner, "a0")
    await until(lambda: sink.got == ["a0"])
    assert runner.task is not None
    done, _ = await asyncio.wait({runner.task}, timeout=5)
    assert done and runner.task.cancelled()
    await runner.stop()


async def test_the_bound_drops_the_oldest_and_counts_them(outbox: SqliteOutbox) -> None:
    runner = LaneRunner(Lane("s", "c0"), ScriptedSink(), LaneStats("http", "t"), outbox, FAST)
    for i in range(7):
        runner.stats.pending += 1
        runner.appended(await outbox.append(Entry(runner.lane, f"e{i}", b"{}", time.time()), 4))
    assert (runner.stats.pending, runner.stats.dropped) == (4, 3)
    assert [p.event_id for p in await outbox.pending(runner.lane, 0, 10)] == ["e3", "e4", "e5", "e6"]
