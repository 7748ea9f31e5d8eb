"""The event delivery kit: a real mosquitto with aiomqtt subscribers, a real aiohttp webhook receiver.

The product's sinks will be tested against these, so each promise they make (same port after an
outage, what a mode answers, what is recorded) is checked here with real clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import aiomqtt
import pytest

from lva_testkit.mqtt_broker import BROKER_USER, AsyncMqttCollector, MosquittoBroker, MqttCollector
from lva_testkit.ports import LOOPBACK
from lva_testkit.webhook_receiver import SIGNATURE_HEADER, WebhookReceiver, sign, verify_signature

SECRET = "webhook-secret"


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as started:
        yield started


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as started:
        yield started


async def _publish(broker: MosquittoBroker, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=qos)


def _post(url: str, body: bytes, timeout: float = 5) -> int:
    """A blocking POST, as a sync e2e test's other process would make."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


# -- the broker ------------------------------------------------------------------------------------


async def test_a_threaded_collector_records_what_a_real_client_publishes(broker: MosquittoBroker) -> None:
    with MqttCollector(broker.url, "lva/events/#") as collector:
        before = time.monotonic()
        await _publish(
            broker,
            [("lva/events/s1", b'{"n": 1}'), ("elsewhere/x", b"not ours"), ("lva/events/s2", b'{"n": 2}')],
        )
        got = await asyncio.to_thread(collector.wait_for, 2, 5)
        await asyncio.sleep(0.1)  # a third (the foreign topic) would have arrived by now
    assert [(m.topic, m.payload, m.qos) for m in collector.messages()] == [
        ("lva/events/s1", b'{"n": 1}', 1),
        ("lva/events/s2", b'{"n": 2}', 1),
    ]
    assert got[1].json() == {"n": 2}
    assert before <= got[0].arrived <= got[1].arrived <= time.monotonic()
    assert broker.url == f"mqtt://{LOOPBACK}:{broker.port}"


async def test_an_async_collector_records_in_the_tests_own_loop(broker: MosquittoBroker) -> None:
    async with AsyncMqttCollector(broker.url, "lva/#", qos=0) as collector:
        await _publish(broker, [("lva/a", b"one"), ("lva/b", b"two")], qos=1)
        got = await collector.wait_for(2, 5)
        with pytest.raises(TimeoutError, match="wanted 3 message"):
            await collector.wait_for(3, 0.2)
    assert [(m.topic, m.payload) for m in got] == [("lva/a", b"one"), ("lva/b", b"two")]
    assert {m.qos for m in got} == {0}  # the subscription's QoS caps the delivery's


async def test_the_broker_comes_back_on_the_same_port_and_collectors_resubscribe(
    broker: MosquittoBroker,
) -> None:
    port, url = broker.port, broker.url
    with MqttCollector(broker.url, "lva/#") as collector:
        await _publish(broker, [("lva/x", b"before")])
        await asyncio.to_thread(collector.wait_for, 1, 5)

        broker.stop()
        assert not broker.running
        with socket.socket() as probe:
            assert probe.connect_ex((LOOPBACK, port)) != 0  # an outage: refused
        with pytest.raises(aiomqtt.MqttError):
            await _publish(broker, [("lva/x", b"lost")])

        started = time.monotonic()
        broker.start()
        start_s = time.monotonic() - started
        await asyncio.to_thread(collector.wait_subscribed, 2, 5)
        await _publish(broker, [("lva/x", b"after")])
        await asyncio.to_thread(collector.wait_for, 2, 5)
    assert (broker.port, broker.url, broker.starts) == (port, url, 2)
    assert [m.payload for m in collector.messages()] == [b"before", b"after"]
    assert start_s < 2, f"mosquitto took {start_s:.2f} s to start"


async def test_a_killed_broker_is_a_crash_the_collector_survives(broker: MosquittoBroker) -> None:
    async with AsyncMqttCollector(broker.url, "lva/#", retry_interval=0.02) as collector:
        broker.restart(down_for=0.1, crash=True)
        await collector.wait_subscribed(2, 5)
        await _publish(broker, [("lva/x", b"after the crash")])
        got = await collector.wait_for(1, 5)
    assert [m.payload for m in got] == [b"after the crash"]
    assert broker.starts == 2
    assert "running" in broker.log_text()


@pytest.mark.parametrize("keep_sessions", [True, False])
async def test_kept_sessions_hold_what_is_published_before_the_subscriber_is_back(
    keep_sessions: bool,
) -> None:
    with MosquittoBroker(keep_sessions=keep_sessions) as broker:
        # A slow reconnect: the publisher below is certainly first after the restart.
        async with AsyncMqttCollector(broker.url, "lva/#", retry_interval=1.0) as collector:
            broker.restart()
            await _publish(broker, [("lva/x", b"while away")])
            assert collector.subscriptions == 1
            await collector.wait_subscribed(2, 5)
            await asyncio.sleep(0.2)
            payloads = [m.payload for m in collector.messages()]
    assert payloads == ([b"while away"] if keep_sessions else [])


def test_the_broker_runs_as_its_own_user_under_root(broker: MosquittoBroker) -> None:
    # Under root it drops to the mosquitto account, in a directory that account owns.
    assert broker.pid is not None
    status = Path(f"/proc/{broker.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    if os.geteuid() == 0:
        assert uid == pwd.getpwnam(BROKER_USER).pw_uid
        assert broker.root.stat().st_uid == uid
    else:
        assert uid == os.geteuid()
    assert broker.log_path.exists()
    assert f"listen socket on port {broker.port}" in broker.log_text()


def test_a_fixed_port_that_is_taken_fails_the_start_with_the_reason() -> None:
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        taken = holder.getsockname()[1]
        broker = MosquittoBroker(port=taken)
        try:
            with pytest.raises(RuntimeError, match=f"port {taken} is taken"):
                broker.start()
        finally:
            broker.close()
    assert not broker.root.exists()


def test_a_collector_wants_an_mqtt_url() -> None:
    with pytest.raises(ValueError, match="mqtt://"):
        MqttCollector("http://127.0.0.1:1883")


# -- the webhook receiver --------------------------------------------------------------------------


async def test_ok_records_path_headers_raw_body_and_order(receiver: WebhookReceiver) -> None:
    bodies = [json.dumps({"event": {"event_id": f"e{i}"}}, separators=(",", ":")).encode() for i in range(3)]
    async with aiohttp.ClientSession() as session:
        statuses = []
        for i, body in enumerate(bodies):
            if i == 2:
                receiver.ok(204)
            async with session.post(
                receiver.url("/hooks/luna?x=1"),
                data=body,
                headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, SECRET)},
            ) as response:
                statuses.append(response.status)
    got = receiver.received()
    assert statuses == [200, 200, 204]
    assert receiver.event_ids() == ["e0", "e1", "e2"]
    assert [r.body for r in got] == bodies
    assert [(r.path, r.query, r.mode, r.status) for r in got] == [("/hooks/luna", "x=1", "ok", 200)] * 2 + [
        ("/hooks/luna", "x=1", "ok", 204)
    ]
    assert got[0].headers["content-type"] == "application/json"
    assert got[0].arrived <= got[1].arrived <= got[2].arrived
    assert all(r.signed_by(SECRET) for r in got)
    assert receiver.url() == f"http://{LOOPBACK}:{receiver.port}/events"


async def test_error_answers_500_and_times_limits_it(receiver: WebhookReceiver) -> None:
    async with aiohttp.ClientSession() as session:
        receiver.error()
        async with session.post(receiver.url(), json={}) as response:
            first = response.status
        receiver.error(503, times=2)  # then back to what was in force before: error 500
        statuses = []
        for _ in range(3):
            async with session.post(receiver.url(), json={}) as response:
                statuses.append(response.status)
        receiver.ok()
        receiver.error(502, times=1)  # then back to ok
        for _ in range(2):
            async with session.post(receiver.url(), json={}) as response:
                statuses.append(response.status)
    assert first == 500
    assert statuses == [503, 503, 500, 502, 200]
    assert [r.mode for r in receiver.received()] == ["error"] * 5 + ["ok"]


async def test_hang_never_answers_until_the_client_gives_up(receiver: WebhookReceiver) -> None:
    receiver.hang()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(receiver.url(), json={"event": {"event_id": "h"}}):
                pass
        waited = time.monotonic() - started
    assert 0.3 <= waited < 1.5
    [request] = receiver.received()
    assert (request.mode, request.status, request.event_id) == ("hang", None, "h")


async def test_down_cuts_a_hung_request_without_an_answer(receiver: WebhookReceiver) -> None:
    receiver.hang()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def hung() -> int:
            async with session.post(receiver.url(), json={}) as response:
                return response.status

        task = asyncio.create_task(hung())
        await receiver.wait_for_async(1, 5)
        started = time.monotonic()
        await asyncio.to_thread(receiver.down)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await task
        cut_after = time.monotonic() - started
    assert cut_after < 1.0


async def test_slow_answers_after_its_delay(receiver: WebhookReceiver) -> None:
    receiver.slow(0.4, status=201)
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.post(receiver.url(), json={}) as response:
            status = response.status
        took = time.monotonic() - started
        receiver.ok()
        async with session.post(receiver.url(), json={}) as response:
            after = response.status
    assert (status, after) == (201, 200)
    assert 0.4 <= took < 1.5
    assert [r.mode for r in receiver.received()] == ["slow", "ok"]


async def test_down_refuses_and_holds_the_port_and_up_listens_on_it_again(receiver: WebhookReceiver) -> None:
    port = receiver.port
    async with aiohttp.ClientSession() as pooled:
        async with pooled.post(receiver.url(), json={}) as response:
            assert response.status == 200
        receiver.down()
        assert not receiver.is_up
        # The pooled keep-alive connection was closed too: not one more request gets through it.
        with pytest.raises(aiohttp.ClientConnectionError):
            async with pooled.post(receiver.url(), json={}):
                pass
    async with aiohttp.ClientSession() as fresh:
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            async with fresh.post(receiver.url(), json={}):
                pass
        assert isinstance(refused.value.os_error, ConnectionRefusedError)
        with socket.socket() as squatter, pytest.raises(OSError):
            squatter.bind((LOOPBACK, port))  # nobody else can take the port while it is down
        receiver.up()
        async with fresh.post(receiver.url(), json={"event": {"event_id": "back"}}) as response:
            assert response.status == 200
    assert receiver.port == port
    # The first POST and the one after up(); none while down.
    assert [r.json for r in receiver.received()] == [{}, {"event": {"event_id": "back"}}]


def test_a_sync_test_waits_for_posts_made_from_another_thread(receiver: WebhookReceiver) -> None:
    bodies = [json.dumps({"event": {"event_id": str(i)}}).encode() for i in range(4)]
    statuses: list[int] = []

    def sender() -> None:
        for body in bodies:
            time.sleep(0.02)
            statuses.append(_post(receiver.url(), body))

    thread = threading.Thread(target=sender)
    thread.start()
    got = receiver.wait_for(4, 5)
    thread.join(5)
    assert [r.event_id for r in got] == ["0", "1", "2", "3"]
    assert statuses == [200] * 4
    receiver.error()
    assert _post(receiver.url(), b"{}") == 500
    with pytest.raises(TimeoutError, match="wanted 9 POST"):
        receiver.wait_for(9, 0.1)


def test_a_receiver_on_a_fixed_port_comes_back_there_after_a_stop() -> None:
    with WebhookReceiver() as first:
        port = first.port
        assert _post(first.url(), b"{}") == 200
    with WebhookReceiver(port) as second:
        assert second.port == port
        assert _post(second.url(), b'{"event": {"event_id": "z"}}') == 200
        assert second.event_ids() == ["z"]


def test_event_ids_names_a_post_without_one(receiver: WebhookReceiver) -> None:
    assert _post(receiver.url(), b"plain text") == 200
    [request] = receiver.received()
    assert request.json is None and request.body == b"plain text"
    with pytest.raises(ValueError, match=r"no event\.event_id"):
        receiver.event_ids()


def test_signatures_follow_the_x_lva_signature_format() -> None:
    body = b'{"event":{"event_id":"e1"}}'
    header = sign(body, SECRET)
    assert header.startswith("sha256=") and len(header) == len("sha256=") + 64
    # The digest of RFC 4231's test case 2, so the format is pinned to HMAC-SHA256 itself.
    assert (
        sign(b"what do ya want for nothing?", "Jefe")
        == "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    assert verify_signature(body, header, SECRET)
    assert verify_signature(body, header, SECRET.encode())
    assert verify_signature(body, header.upper().replace("SHA256=", "sha256="), SECRET)
    assert not verify_signature(body, header, "another secret")
    assert not verify_signature(body + b" ", header, SECRET)
    assert not verify_signature(body, None, SECRET)
    assert not verify_signature(body, header.removeprefix("sha256="), SECRET)
    assert not verify_signature(body, "sha1=" + header.removeprefix("sha256="), SECRET)
