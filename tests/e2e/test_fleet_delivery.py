"""Outbound delivery in a fleet: the outbox is the shared PostgreSQL store's, so an agent that
dies with undelivered events leaves them to the others.

Two real cores on one database, a facade over both. The stream's events go to two receivers: a
witness that always accepts (what was produced) and a target that refuses until the agent that
produced them has been SIGKILLed. The survivor finds the dead agent's lanes in the outbox,
claims them (the dead session's advisory locks went with it) and delivers every event, in
order. On the way, the events' images are served through the facade from either core.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from lva_testkit.clips import clip
from lva_testkit.fleet import Fleet
from lva_testkit.postgres import PostgresCluster
from lva_testkit.rtsp_server import RtspServer
from lva_testkit.stack import Service
from lva_testkit.streams import create
from lva_testkit.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.timeout(240)
SETTINGS = {
    "LVA_DELIVERY__INITIAL_BACKOFF": "0.2",
    "LVA_DELIVERY__MAX_BACKOFF": "1.0",
    "LVA_DELIVERY__SCAN_INTERVAL": "0.5",
}


@pytest.fixture(scope="module")
def camera(tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator[RtspServer]:
    footage = clip(tmp_path_factory.mktemp("fleet-delivery"), "people.mp4", seconds=4.0)
    server = RtspServer(footage, log_dir / "rtsp-fleet-delivery.log", mounts=1, respawn=True).start()
    yield server
    server.stop()


@pytest.fixture
async def fleet(postgres: PostgresCluster, triton: Service, log_dir: Path) -> AsyncIterator[Fleet]:
    folder = log_dir / "fleet-delivery"
    folder.mkdir(parents=True, exist_ok=True)
    started = Fleet(folder, triton.address, postgres.database("fleet_delivery"))
    try:
        yield started
    finally:
        started.stop()


def event_ids(receiver: WebhookReceiver) -> list[str]:
    return [json.loads(r.body)["event"]["event_id"] for r in receiver.received()]


async def test_a_dead_agent_s_undelivered_events_are_delivered_by_another(
    fleet: Fleet, camera: RtspServer
) -> None:
    with WebhookReceiver() as witness, WebhookReceiver() as target:
        target.error(503)
        fleet.start_core("a1", extra=SETTINGS)
        fleet.start_core("a2", extra=SETTINGS)
        facade = fleet.start_facade()
        base = f"http://{facade.address}"
        body = {
            "name": "counted camera",
            "data": {
                "reference": camera.url_of("/cam0"),
                "type": "stream",
                "frame_processing": {"rate": {"period": 5, "unit": "frame"}},
            },
            "analytics": [
                {
                    "analytic_name": "people_counter",
                    "parameters": {
                        "probe_count": 1,
                        "rate": {"period": 1, "unit": "frame"},
                        "event_policy": {"trigger": "period", "interval": 0.01},
                        "callbacks": [
                            {"type": "http", "url": witness.url()},
                            {"type": "http", "url": target.url()},
                        ],
                    },
                }
            ],
            "autorestart": {"restart": 1, "attempt_count": 100, "delay": 0.5},
        }
        async with aiohttp.ClientSession() as http:
            stream_id = await create(http, base, body)
            await asyncio.to_thread(witness.wait_for, 8, 60)
            assert all(r.status == 503 for r in target.received())
            owner = (await fleet.owners())[stream_id][0]
            assert owner in ("a1", "a2")

            # An event's image is kept by the agent that produced it, and served through the
            # facade whichever core the request reaches: the others ask that agent.
            image = json.loads(witness.received()[-1].body)["event"]["overview"]["image"]
            served = set()
            for _ in range(4):  # round robin over both cores
                async with http.get(f"{base}{image}") as resp:
                    assert resp.status == 200, await resp.text()
                    served.add(await resp.read())
            assert len(served) == 1 and next(iter(served))[:2] == b"\xff\xd8"  # one JPEG

            fleet.kill(owner)
            produced = list(dict.fromkeys(event_ids(witness)))
            target.ok()
            deadline = time.monotonic() + fleet.timing.ttl + 60
            while not set(produced) <= set(event_ids(target)):
                assert time.monotonic() < deadline, (len(produced), len(set(event_ids(target))))
                await asyncio.sleep(0.2)
            accepted = [r for r in target.received() if r.status == 200]
            order = [json.loads(r.body)["event"]["event_id"] for r in accepted]
            delivered = [e for e in dict.fromkeys(order) if e in set(produced)]
            assert delivered == produced, "the survivor delivered the dead agent's events out of order"
