"""The benchmark as a client of the public API: streams over REST, events from ``/1/ws``.

Everything goes through the facade, as an external client's requests do, so the figures include
the REST/gRPC hop and the WebSocket bridge wherever events are delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

FINAL = {"done", "failure", "stop"}
PROBE = [{"analytic_name": "pipeline_probe", "parameters": {}}]


def people_counter(period_frames: int = 1) -> dict[str, Any]:
    """people_counter analysing every frame the stream samples (its own rate defaults to 1/s)."""
    return {
        "analytic_name": "people_counter",
        "parameters": {"rate": {"period": period_frames, "unit": "frame"}},
    }


def stream_body(
    reference: str | Path,
    analytics: Sequence[dict[str, Any]],
    *,
    live: bool = False,
    every: int = 1,
    status: str = "pending",
    name: str = "bench",
) -> dict[str, Any]:
    """A CreateStream body: every ``every``-th frame of the source goes to ``analytics``."""
    return {
        "name": name,
        "status": status,
        "data": {
            "reference": str(reference),
            "type": "stream" if live else "videofile",
            "frame_processing": {"rate": {"period": every, "unit": "frame"}},
        },
        "analytics": list(analytics),
    }


def timestamp(value: str) -> float:
    """An RFC 3339 timestamp of the API (nanoseconds, ``Z``) as seconds since the epoch."""
    head, _, fraction = value.rstrip("Z").partition(".")
    # datetime parses at most microseconds; the API renders up to nanoseconds.
    return datetime.fromisoformat(head + "+00:00").timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


class Api:
    def __init__(self, http: aiohttp.ClientSession, base_url: str, ws_url: str) -> None:
        self.http = http
        self.base_url = base_url
        self.ws_url = ws_url

    async def _json(self, method: str, path: str, expect: int, **kwargs: Any) -> dict[str, Any]:
        async with self.http.request(method, self.base_url + path, **kwargs) as resp:
            text = await resp.text()
            if resp.status != expect:
                raise RuntimeError(f"{method} {path}: {resp.status} {text[:500]}")
            return dict(json.loads(text)) if text else {}

    async def create(self, body: dict[str, Any]) -> str:
        return str((await self._json("POST", "/1/streams", 201, json=body))["stream_id"])

    async def get(self, stream_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/1/streams/{stream_id}", 200)

    async def list_streams(self) -> list[dict[str, Any]]:
        return list((await self._json("GET", "/1/streams", 200, params={"page_size": "1000"}))["streams"])

    async def patch(self, stream_id: str, status: str) -> None:
        await self._json("PATCH", f"/1/streams/{stream_id}", 200, json={"status": status})

    async def delete(self, stream_id: str) -> None:
        async with self.http.delete(f"{self.base_url}/1/streams/{stream_id}") as resp:
            if resp.status not in (200, 204):
                raise RuntimeError(f"DELETE {stream_id}: {resp.status} {await resp.text()}")

    async def delete_all(self) -> None:
        for stream in await self.list_streams():
            await self.delete(stream["stream_id"])

    async def analytics(self) -> list[str]:
        return [a["name"] for a in (await self._json("GET", "/1/analytics", 200))["analytics"]]

    async def wait_final(self, ids: Sequence[str], timeout: float, poll: float = 0.1) -> list[dict[str, Any]]:
        """Poll the list until every stream of ``ids`` is done, failed or stopped; their records."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        while True:
            streams = {s["stream_id"]: s for s in await self.list_streams() if s["stream_id"] in wanted}
            if len(streams) == len(wanted) and all(s["status"] in FINAL for s in streams.values()):
                return [streams[i] for i in ids]
            if time.monotonic() > deadline:
                states = sorted({s["status"] for s in streams.values()})
                raise TimeoutError(f"streams still {states} after {timeout:.0f} s")
            await asyncio.sleep(poll)

    def watch(self, stream_id: str) -> Watcher:
        return Watcher(self.http, f"{self.ws_url}?stream_id={stream_id}")


@dataclass
class Watcher:
    """One WebSocket subscriber of one stream: latencies of pipeline_probe events as they arrive.

    The receipt time is taken first thing, before the message is parsed, so that the client's
    own parsing does not count as the agent's latency.
    """

    http: aiohttp.ClientSession
    uri: str
    latencies: list[float] = field(default_factory=list)  # receipt - decoded_at_wall, seconds
    probe_events: int = 0
    other_events: int = 0
    lost: int = 0
    statuses: list[str] = field(default_factory=list)
    first_event: tuple[float, int] | None = None  # (receipt wall time, frame_number)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    final: asyncio.Event = field(default_factory=asyncio.Event)
    # Set at the first analytics event, or at the end when there was none.
    first_or_final: asyncio.Event = field(default_factory=asyncio.Event)
    record_latency: bool = True
    task: asyncio.Task[None] | None = None

    def start(self) -> Watcher:
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            async with self.http.ws_connect(self.uri, heartbeat=None, max_msg_size=0) as ws:
                async for message in ws:
                    received = time.time()
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    self._take(received, json.loads(message.data))
                    if self.final.is_set():
                        return
        finally:
            self.subscribed.set()
            self.final.set()
            self.first_or_final.set()

    def _take(self, received: float, data: dict[str, Any]) -> None:
        # The first message is the stream's current status: from then on nothing is missed.
        self.subscribed.set()
        status = data.get("stream_status")
        if status and (not self.statuses or self.statuses[-1] != status):
            self.statuses.append(status)
        self.lost += int(data.get("lost_messages") or 0)
        results = data.get("analytics_results") or {}
        probe = results.get("pipeline_probe")
        if probe is not None:
            self.probe_events += 1
            if self.first_event is None:
                self.first_event = (received, int(probe["frame_number"]))
            if self.record_latency:
                self.latencies.append(received - float(probe["decoded_at_wall"]))
        elif results:
            self.other_events += 1
            if self.first_event is None:
                self.first_event = (received, -1)
        if self.first_event is not None or status in FINAL:
            self.first_or_final.set()
        if status in FINAL:
            self.final.set()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


async def subscribe(api: Api, ids: Sequence[str], timeout: float = 10.0) -> list[Watcher]:
    """A started Watcher per stream, each past its first message (so that none misses an event)."""
    watchers = [api.watch(stream_id).start() for stream_id in ids]
    async with asyncio.timeout(timeout):
        await asyncio.gather(*(w.subscribed.wait() for w in watchers))
    return watchers
