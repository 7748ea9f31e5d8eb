"""Outbound delivery (issue 13): callbacks over a real aiohttp receiver and a real mosquitto.

A core of its own (short backoff, so that outages end quickly) on the session's Triton, with
a facade. Every stream is the sample clip with a people counter that reports every sampled
frame, so each test knows how many events to expect: the ones the WebSocket saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lva_common.aio import wait_within
from lva_testkit.clips import clip, truth
from lva_testkit.mqtt_broker import MosquittoBroker, MqttCollector
from lva_testkit.stack import Service, start_core, start_facade
from lva_testkit.streams import assert_luna_error, delete, file_stream, get, watch
from lva_testkit.webhook_receiver import WebhookReceiver

SECRET = "s3cr3t-never-shown-0f9e"
TOKEN = "Bearer tok-never-shown-77aa"
CORE_SETTINGS = {
    "LVA_DELIVERY__INITIAL_BACKOFF": "0.2",
    "LVA_DELIVERY__MAX_BACKOFF": "1.0",
    "LVA_DELIVERY__SCAN_INTERVAL": "0.5",
}


def clip_stream(path: Path, analytics: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The clip with every frame analysed: about twenty events."""
    body = file_stream(path, analytics, **extra)
    body["data"]["frame_processing"] = {"rate": {"period": 1, "unit": "frame"}}
    return body


def counter(callbacks: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A people counter that reports every sampled frame it finds someone on."""
    return {
        "analytic_name": "people_counter",
        "parameters": {
            "probe_count": 1,
            "people_count_threshold": 1,
            "rate": {"period": 1, "unit": "frame"},
            "event_policy": {"trigger": "period", "interval": 0.01},
            "targets": ["coordinates", "overview"],
            "callbacks": callbacks,
            **extra,
        },
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip(tmp_path_factory.mktemp("delivery-clips"))


@pytest.fixture(scope="module")
def delivery_core(log_dir: Path, triton: Service) -> Iterator[Service]:
    service = start_core(log_dir, triton.address, CORE_SETTINGS)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def delivery_facade(log_dir: Path, delivery_core: Service) -> Iterator[Service]:
    service = start_facade(log_dir, delivery_core.address)
    yield service
    service.stop()


@pytest.fixture
def url(delivery_facade: Service) -> str:
    return f"http://{delivery_facade.address}"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


async def run_stream(
    http: aiohttp.ClientSession, url: str, facade: Service, body: dict[str, Any]
) -> tuple[str, list[dict[str, Any]]]:
    """Create the stream, and return it with the crowd events its WebSocket saw until done."""
    async with http.post(f"{url}/1/streams", json={**body, "status": "pause"}) as resp:
        created = await resp.json()
        assert resp.status == 201, created
    stream_id = created["stream_id"]
    reader = await watch(f"ws://{facade.address}/1/ws?stream_id={stream_id}", {"done", "failure"})
    async with http.patch(f"{url}/1/streams/{stream_id}", json={"status": "pending"}) as resp:
        assert resp.status == 200, await resp.text()
    messages = await wait_within(reader, 120)
    assert messages[-1]["stream_status"] == "done", messages[-1]
    crowd = [m["analytics_results"]["people_counter"] for m in messages if m["analytics_results"]]
    assert len(crowd) >= 5, f"the clip gave only {len(crowd)} events"
    return stream_id, crowd


async def callback_stats(http: aiohttp.ClientSession, url: str, stream_id: str) -> list[dict[str, Any]]:
    return list((await get(http, url, stream_id))["statistics"]["callbacks"])


async def wait_delivered(
    http: aiohttp.ClientSession, url: str, stream_id: str, count: int, timeout: float = 60
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        stats = await callback_stats(http, url, stream_id)
        if all(s["delivered"] >= count and s["pending"] == 0 for s in stats):
            return stats
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.2)


def bodies(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    return [json.loads(request.body) for request in receiver.received()]


async def test_events_arrive_over_http_and_mqtt_in_luna_envelopes(
    session: aiohttp.ClientSession,
    url: str,
    delivery_facade: Service,
    delivery_core: Service,
    receiver: WebhookReceiver,
    broker: MosquittoBroker,
    sample: Path,
) -> None:
    callbacks = [
        {"type": "http", "url": receiver.url(), "secret": SECRET, "headers": {"Authorization": TOKEN}},
        {"type": "mqtt", "url": broker.url, "topic": "lva/test/crowd", "qos": 1},
    ]
    with MqttCollector(broker.url, "lva/test/#") as mqtt:
        stream_id, crowd = await run_stream(
            session, url, delivery_facade, clip_stream(sample, [counter(callbacks)])
        )
        stats = await wait_delivered(session, url, stream_id, len(crowd))
        messages = await asyncio.to_thread(mqtt.wait_for, len(crowd), 30)

    ids = [event["event_id"] for event in crowd]
    assert [b["event"]["event_id"] for b in bodies(receiver)] == ids  # every event, in order
    assert [m.json()["event"]["event_id"] for m in messages] == ids
    expected = truth(sample)["frames"]
    for request, event in zip(receiver.received(), crowd, strict=True):
        body = json.loads(request.body)
        assert set(body) == {"event_type", "account_id", "event_create_time", "event_end_time", "event"}
        assert body["event_type"] == "crowd" and body["event_create_time"] == event["event_create_time"]
        inner = body["event"]
        assert inner["stream_id"] == stream_id and inner["track_id"] is None and "location" in inner
        assert inner["people_count"] == event["people_count"] == len(inner["overview"]["people_coordinates"])
        frame = expected[inner["overview"]["frame_number"]]
        assert 1 <= inner["people_count"] <= len(frame["objects"])
        assert request.signed_by(SECRET), "the signature does not match the body"
        assert request.headers["Authorization"] == TOKEN
        assert request.headers["Idempotency-Key"] == inner["event_id"]
    assert [(s["type"], s["delivered"], s["pending"], s["dropped"]) for s in stats] == [
        ("http", len(crowd), 0, 0),
        ("mqtt", len(crowd), 0, 0),
    ]
    assert stats[0]["callback"] == "analytics[0].parameters.callbacks[0]"

    # The secret and the token never leave the core: not in answers, not in its log.
    async with session.get(f"{url}/1/streams/{stream_id}") as resp:
        shown = await resp.text()
    async with session.get(f"{url}/1/streams") as resp:
        shown += await resp.text()
    assert SECRET not in shown and TOKEN not in shown
    parameters = (
        json.loads((await resp.text()) or "{}") and (await get(session, url, stream_id))["analytics"][0]
    )
    shown_callbacks = parameters["parameters"]["callbacks"]
    assert shown_callbacks[0]["secret"] == "***" and shown_callbacks[0]["headers"]["Authorization"] == "***"
    assert SECRET not in delivery_core.log_text() and TOKEN not in delivery_core.log_text()
    metrics = await asyncio.to_thread(_scrape, delivery_core)
    assert metric_line("delivered", stream_id, 1, "mqtt", len(crowd)) in metrics
    await delete(session, url, stream_id)


def metric_line(what: str, stream_id: str, callback: int, kind: str, value: int) -> str:
    labels = f'callback="analytics[0].parameters.callbacks[{callback}]",stream_id="{stream_id}",type="{kind}"'
    return f"lva_callback_events_{what}_total{{{labels}}} {value}.0"


def _scrape(core: Service) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{core.metrics_port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


async def test_a_receiver_down_for_10_s_gets_every_event_in_order(
    session: aiohttp.ClientSession,
    url: str,
    delivery_facade: Service,
    receiver: WebhookReceiver,
    sample: Path,
) -> None:
    receiver.down()
    started = time.monotonic()
    body = clip_stream(sample, [counter([{"type": "http", "url": receiver.url()}])])
    stream_id, crowd = await run_stream(session, url, delivery_facade, body)
    stats = await callback_stats(session, url, stream_id)
    assert stats[0]["pending"] == len(crowd) and stats[0]["delivered"] == 0, stats
    assert stats[0]["failed"] >= 1 and stats[0]["last_error"], stats
    await asyncio.sleep(max(0.0, 10 - (time.monotonic() - started)))
    receiver.up()
    stats = await wait_delivered(session, url, stream_id, len(crowd), timeout=30)
    received = [b["event"]["event_id"] for b in bodies(receiver)]
    # At least once: a retry may repeat an event, always under its own id, and never out of order.
    assert list(dict.fromkeys(received)) == [event["event_id"] for event in crowd]
    frames = {}
    for b in bodies(receiver):
        frames.setdefault(b["event"]["overview"]["frame_number"], set()).add(b["event"]["event_id"])
    assert all(len(ids) == 1 for ids in frames.values()), "one frame's event came with two ids"
    assert stats[0]["dropped"] == 0
    await delete(session, url, stream_id)


@pytest.mark.parametrize("failure", ["error", "hang", "slow"])
async def test_a_failing_receiver_holds_up_neither_frames_nor_other_callbacks(
    session: aiohttp.ClientSession,
    url: str,
    delivery_facade: Service,
    sample: Path,
    failure: str,
) -> None:
    with WebhookReceiver() as bad, WebhookReceiver() as good:
        {"error": bad.error, "hang": bad.hang, "slow": lambda: bad.slow(3.0)}[failure]()
        timeout = {"timeout": 1} if failure == "hang" else {}
        # The bad receiver's stream also delivers to the good one: its second callback.
        first = clip_stream(
            sample,
            [
                counter(
                    [{"type": "http", "url": bad.url(), **timeout}, {"type": "http", "url": good.url("/a")}]
                )
            ],
        )
        second = clip_stream(sample, [counter([{"type": "http", "url": good.url("/b")}])])

        async def timed(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]], float]:
            started = time.monotonic()
            stream_id, crowd = await run_stream(session, url, delivery_facade, body)
            return stream_id, crowd, time.monotonic() - started

        (id_a, crowd_a, seconds_a), (id_b, crowd_b, seconds_b) = await asyncio.gather(
            timed(first), timed(second)
        )
        stream_a, stream_b = await get(session, url, id_a), await get(session, url, id_b)
        # The frame rate: the two streams of the same clip, side by side, took as long (a stream
        # that waited for the failing receiver would take 3 s, or 1 s, per event).
        assert seconds_a <= seconds_b * 1.5 + 1.0, (seconds_a, seconds_b)
        # The healthy callbacks kept up while the streams ran: at most the last few in flight.
        healthy = [stream_a["statistics"]["callbacks"][1], stream_b["statistics"]["callbacks"][0]]
        assert all(c["pending"] <= 3 and c["failed"] == 0 for c in healthy), healthy
        # When both streams are done, the failing receiver's lane is far behind: nothing waited for it.
        behind = stream_a["statistics"]["callbacks"][0]
        if failure == "slow":  # one event every 3 s
            assert behind["delivered"] < len(crowd_a) // 2 and behind["pending"] > 0, behind
        else:
            assert behind["delivered"] == 0 and behind["pending"] == len(crowd_a), behind
        # Frames: the stream with the failing receiver analysed every frame the other one did.
        assert stream_a["statistics"]["frames_processed"] == stream_b["statistics"]["frames_processed"]
        assert stream_a["statistics"]["frames_dropped"] == 0
        good_requests = await asyncio.to_thread(good.wait_for, len(crowd_a) + len(crowd_b), 30)
        by_path: dict[str, list[str]] = {}
        for request in good_requests:
            by_path.setdefault(request.path, []).append(json.loads(request.body)["event"]["event_id"])
        assert by_path["/a"] == [e["event_id"] for e in crowd_a]
        assert by_path["/b"] == [e["event_id"] for e in crowd_b]
        # Delivery latency to the good receiver while the bad one fails: created -> arrived.
        stats_a = await callback_stats(session, url, id_a)
        assert stats_a[1]["delivered"] == len(crowd_a) and stats_a[1]["pending"] == 0, stats_a
        for stream_id in (id_a, id_b):
            await delete(session, url, stream_id)


async def test_undelivered_events_survive_a_sigkill(
    session: aiohttp.ClientSession,
    log_dir: Path,
    triton: Service,
    receiver: WebhookReceiver,
    sample: Path,
    tmp_path: Path,
) -> None:
    store = tmp_path / "streams.sqlite3"
    core = start_core(tmp_path, triton.address, CORE_SETTINGS, store=store)
    facade = start_facade(tmp_path, core.address)
    try:
        base = f"http://{facade.address}"
        receiver.error(503)
        body = clip_stream(sample, [counter([{"type": "http", "url": receiver.url()}])])
        stream_id, crowd = await run_stream(session, base, facade, body)
        stats = await callback_stats(session, base, stream_id)
        assert stats[0]["pending"] == len(crowd), stats
        assert core.stop(signal.SIGKILL) == -signal.SIGKILL
        with contextlib.closing(sqlite3.connect(store)) as db:
            (rows,) = db.execute("SELECT count(*) FROM outbox").fetchone()
        assert rows == len(crowd)
        receiver.clear()
        receiver.ok()
        core = start_core(tmp_path, triton.address, CORE_SETTINGS, store=store, port=core.port)
        requests = await asyncio.to_thread(receiver.wait_for, len(crowd), 30)
        assert [json.loads(r.body)["event"]["event_id"] for r in requests] == [e["event_id"] for e in crowd]
        assert f"stream {stream_id}: {len(crowd)} undelivered events" in core.log_text()
    finally:
        facade.stop()
        core.stop()


async def test_the_outbox_bound_drops_the_oldest_and_counts_them(
    session: aiohttp.ClientSession, triton: Service, receiver: WebhookReceiver, sample: Path, tmp_path: Path
) -> None:
    store = tmp_path / "streams.sqlite3"
    core = start_core(
        tmp_path, triton.address, {**CORE_SETTINGS, "LVA_DELIVERY__MAX_PENDING": "3"}, store=store
    )
    facade = start_facade(tmp_path, core.address)
    try:
        base = f"http://{facade.address}"
        receiver.down()
        body = clip_stream(sample, [counter([{"type": "http", "url": receiver.url()}])])
        stream_id, crowd = await run_stream(session, base, facade, body)
        stats = await callback_stats(session, base, stream_id)
        assert (stats[0]["pending"], stats[0]["dropped"]) == (3, len(crowd) - 3), stats
        metrics = await asyncio.to_thread(_scrape, core)
        assert metric_line("dropped", stream_id, 0, "http", len(crowd) - 3) in metrics
        # On disk too the lane holds three, and they are the ones delivered after a restart.
        assert core.stop() == 0
        with contextlib.closing(sqlite3.connect(store)) as db:
            assert db.execute("SELECT count(*) FROM outbox").fetchone() == (3,)
        core = start_core(
            tmp_path,
            triton.address,
            {**CORE_SETTINGS, "LVA_DELIVERY__MAX_PENDING": "3"},
            store=store,
            port=core.port,
        )
        receiver.up()
        await wait_delivered(session, base, stream_id, 3)
        # The newest three, in order.
        assert [b["event"]["event_id"] for b in bodies(receiver)] == [e["event_id"] for e in crowd[-3:]]
    finally:
        facade.stop()
        core.stop()


@pytest.mark.parametrize(
    ("callbacks", "path", "words"),
    [
        (
            [{"type": "http", "url": "ftp://example.com/x"}],
            "callbacks[0].url",
            "scheme must be http or https",
        ),
        ([{"type": "http", "url": "http://no-such-host.invalid/x"}], "callbacks[0].url", "does not resolve"),
        ([{"type": "http", "url": "http://127.0.0.1:9/x"}] * 11, "callbacks", "at most 10"),
        (
            [{"type": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": "a/#"}],
            "callbacks[0].topic",
            "wildcards",
        ),
        ([{"type": "mqtt", "url": "mqtt://127.0.0.1:1883"}], "callbacks[0].topic", "required"),
        ([{"type": "mqtt", "url": "http://127.0.0.1", "topic": "t"}], "callbacks[0].url", "mqtt or mqtts"),
        ([{"type": "kafka", "url": "kafka://x"}], "callbacks[0].type", "unknown callback type"),
        ([{"type": "http", "url": "http://127.0.0.1/x", "secret": ""}], "callbacks[0].secret", ""),
        ([{"type": "http", "url": "http://127.0.0.1/x", "timeout": 0}], "callbacks[0].timeout", ""),
        (
            [{"type": "http", "url": "http://127.0.0.1/x", "headers": {"Content-Type": "x"}}],
            "callbacks[0].headers.Content-Type",
            "set by the agent",
        ),
        ({"type": "http"}, "callbacks", "must be a list"),
    ],
)
async def test_bad_callbacks_are_refused_with_the_field(
    session: aiohttp.ClientSession, url: str, sample: Path, callbacks: Any, path: str, words: str
) -> None:
    body = clip_stream(sample, [counter([])])
    body["analytics"][0]["parameters"]["callbacks"] = callbacks
    async with session.post(f"{url}/1/streams", json=body) as resp:
        answer = await resp.json()
        assert resp.status == 400, answer
    assert_luna_error(answer, 12027)
    assert answer["detail"].startswith(f"analytics[0].parameters.{path}"), answer
    assert words in answer["detail"], answer


async def test_luna_people_count_is_people_counter(
    session: aiohttp.ClientSession, url: str, sample: Path
) -> None:
    body = clip_stream(
        sample, [{"analytic_name": "people_count", "parameters": {"probe_count": 3}}], status="pause"
    )
    async with session.post(f"{url}/1/streams", json=body) as resp:
        created = await resp.json()
        assert resp.status == 201, created
    stream = await get(session, url, created["stream_id"])
    assert [a["analytic_name"] for a in stream["analytics"]] == ["people_counter"]
    assert stream["analytics"][0]["parameters"]["probe_count"] == 3
    await delete(session, url, created["stream_id"])


async def test_every_analytic_s_schema_shows_the_callbacks(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(f"{url}/1/analytics") as resp:
        catalogue = (await resp.json())["analytics"]
    assert {"people_counter", "human_tracking", "pipeline_probe"} <= {a["name"] for a in catalogue}
    for analytic in catalogue:
        callbacks = analytic["parameters_schema"]["properties"]["callbacks"]
        assert callbacks["maxItems"] == 10, analytic["name"]
        types = [branch["properties"]["type"]["const"] for branch in callbacks["items"]["oneOf"]]
        assert types == ["http", "mqtt"], analytic["name"]
