"""Metrics and logs of the real services: /metrics agrees with the streams' statistics."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from lva.v1 import agent_pb2, agent_pb2_grpc
from lva_testkit.clips import clip
from lva_testkit.stack import Service, start_core
from lva_testkit.streams import create, delete, file_stream, wait_status

COUNTER = [
    {
        "analytic_name": "people_counter",
        "parameters": {"probe_count": 1, "rate": {"period": 1, "unit": "frame"}},
    }
]


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text format -> {(name, labels): value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        assert match, line
        labels = frozenset(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


async def scrape(
    http: aiohttp.ClientSession, url: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        return parse(await resp.text())


async def test_core_metrics_match_stream_statistics(
    http: aiohttp.ClientSession, base_url: str, core: Service, tmp_path: Path
) -> None:
    metrics_url = f"http://127.0.0.1:{core.metrics_port}/metrics"
    model = frozenset({("model", "person_detector")})
    # The model's series are the session's: this test compares what they gained while it ran.
    before = await scrape(http, metrics_url)
    stream_id = await create(http, base_url, file_stream(clip(tmp_path), COUNTER))
    try:
        stream = await wait_status(http, base_url, stream_id, {"done"}, 120)
        metrics = await scrape(http, metrics_url)
    finally:
        await delete(http, base_url, stream_id)
    stats = stream["statistics"]
    label = frozenset({("stream_id", stream_id)})
    assert metrics[("lva_stream_frames_decoded_total", label)] == stats["frames_decoded"] > 0
    assert metrics[("lva_stream_frames_processed_total", label)] == stats["frames_processed"] > 0
    assert metrics[("lva_stream_frames_dropped_total", label)] == stats["frames_dropped"]
    assert metrics[("lva_stream_reconnects_total", label)] == stats["reconnects"]
    assert metrics[("lva_stream_frame_age_seconds", label)] == pytest.approx(stats["frame_age"], abs=1e-3)
    assert metrics[("lva_stream_status", frozenset({("stream_id", stream_id), ("status", "done")}))] == 1

    def gained(name: str) -> float:
        return metrics[(name, model)] - before.get((name, model), 0.0)

    # Every processed frame went through person_detector once: at least this stream's frames
    # were batched (more only if another stream of the session still runs), in at least one batch.
    assert gained("lva_inference_batch_size_sum") >= stats["frames_processed"]
    assert gained("lva_inference_batch_size_count") >= 1
    assert gained("lva_inference_latency_seconds_count") == gained("lva_inference_batch_size_count")
    assert metrics[("lva_event_subscribers", label)] == 0  # nobody watched this stream
    assert ("lva_event_messages_dropped_total", frozenset()) in metrics


async def test_facade_metrics_count_routes_statuses_and_codes(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    bad = frozenset(
        {("method", "GET"), ("route", "/1/streams/{stream_id}"), ("status", "400"), ("error_code", "12012")}
    )
    good = frozenset({("method", "GET"), ("route", "/version"), ("status", "200"), ("error_code", "")})
    latency = frozenset({("method", "GET"), ("route", "/version")})
    # The facade serves the whole session: the series must gain exactly this test's requests.
    before = await scrape(http, f"{base_url}/metrics")
    async with http.get(f"{base_url}/1/streams/not-a-uuid") as resp:
        assert resp.status == 400
    async with http.get(f"{base_url}/version") as resp:
        assert resp.status == 200
    metrics = await scrape(http, f"{base_url}/metrics")

    def gained(name: str, labels: frozenset[tuple[str, str]]) -> float:
        return metrics[(name, labels)] - before.get((name, labels), 0.0)

    assert gained("lva_http_requests_total", bad) == 1
    assert gained("lva_http_requests_total", good) == 1
    assert gained("lva_http_request_duration_seconds_count", latency) == 1
    assert not any("not-a-uuid" in value for _, labels in metrics for _, value in labels)  # bounded labels


@pytest.fixture
def json_core(log_dir: Path, triton: Service) -> Iterator[Service]:
    service = start_core(log_dir, triton.address, {"LVA_CORE__LOG_FORMAT": "json"})
    yield service
    service.stop()


async def test_json_logs_carry_request_and_stream_ids(json_core: Service, tmp_path: Path) -> None:
    request_id = f"{int(time.time())},{uuid.uuid4()}"
    async with grpc.aio.insecure_channel(json_core.address) as channel:
        await agent_pb2_grpc.AgentServiceStub(channel).GetVersion(
            agent_pb2.GetVersionRequest(), metadata=(("luna-request-id", request_id),)
        )
        from lva.v1 import streams_pb2, streams_pb2_grpc

        created = await streams_pb2_grpc.StreamsServiceStub(channel).CreateStream(
            streams_pb2.CreateStreamRequest(data=streams_pb2.StreamData(reference=str(clip(tmp_path))))
        )
    deadline = time.monotonic() + 20
    while True:
        entries = [json.loads(line) for line in json_core.log_text().splitlines() if line.strip()]
        if any(e["stream_id"] == created.stream_id and "done" in e["message"] for e in entries):
            break
        assert time.monotonic() < deadline, "the stream's done was never logged"
        await asyncio.sleep(0.3)
    assert all({"time", "level", "logger", "message", "request_id", "stream_id"} <= set(e) for e in entries)
    assert any(e["request_id"] == request_id and "GetVersion" in e["message"] for e in entries)
    assert any(e["stream_id"] == created.stream_id and "in_progress" in e["message"] for e in entries)
    assert any(e["stream_id"] == created.stream_id and "done" in e["message"] for e in entries)


WATCH = "/lva.v1.StreamsService/WatchStream"


async def test_watch_stream_gets_a_log_line_and_a_count(
    http: aiohttp.ClientSession, base_url: str, core: Service, tmp_path: Path
) -> None:
    from lva.v1 import streams_pb2, streams_pb2_grpc

    log_start = len(core.log_text())
    metrics_url = f"http://127.0.0.1:{core.metrics_port}/metrics"
    counted = frozenset({("method", WATCH), ("code", "cancelled")})
    before = (await scrape(http, metrics_url)).get(("lva_grpc_requests_total", counted), 0.0)
    stream_id = await create(http, base_url, file_stream(clip(tmp_path), [], status="pause"))
    try:
        async with grpc.aio.insecure_channel(core.address) as channel:
            call = streams_pb2_grpc.StreamsServiceStub(channel).WatchStream(
                streams_pb2.WatchStreamRequest(stream_id=stream_id),
                metadata=(("luna-request-id", "1700000000,watch-probe"),),
            )
            first = await call.read()
            assert first.stream_status == streams_pb2.STREAM_STATUS_PAUSE
            call.cancel()
        # And the same through the facade's WebSocket, opened and closed in a loop: each watch is
        # one count, and none leaves an error behind (a token reset in another context did).
        for _ in range(10):
            async with http.ws_connect(f"{base_url.replace('http', 'ws')}/1/ws?stream_id={stream_id}") as ws:
                assert json.loads((await ws.receive()).data)["stream_status"] == "pause"
        deadline = time.monotonic() + 10
        while (await scrape(http, metrics_url)).get(("lva_grpc_requests_total", counted), 0.0) < before + 11:
            assert time.monotonic() < deadline, "WatchStream not counted"
            await asyncio.sleep(0.2)
    finally:
        await delete(http, base_url, stream_id)
    log = core.log_text()[log_start:]  # this test's lines only: the core serves the whole session
    watch_lines = [line for line in log.splitlines() if WATCH in line]
    assert any(
        re.search(rf"\[1700000000,watch-probe\] .*{WATCH} cancelled [\d.]+ ms, 1 messages", line)
        for line in watch_lines
    ), watch_lines
    assert "different Context" not in log and "Traceback" not in log
