"""The stream engine end to end: real Triton, core and facade; real clips, real WebSockets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lva_testkit.boxes import inside, iou
from lva_testkit.clips import clip, truth
from lva_testkit.stack import Service
from lva_testkit.streams import (
    FINAL,
    assert_luna_error,
    create,
    delete,
    file_stream,
    get,
    patch,
    statuses,
    wait_status,
    watch,
)

BOTH: list[dict[str, Any]] = [
    {
        "analytic_name": "people_counter",
        "parameters": {
            "probe_count": 1,
            "people_count_threshold": 1,
            "rate": {"period": 1, "unit": "frame"},
            "event_policy": {"trigger": "period", "interval": 0.01},
            "targets": ["coordinates", "overview"],
        },
    },
    {"analytic_name": "human_tracking", "parameters": {"targets": ["ags"], "min_hits": 1}},
]


# A valid account id that owns none of the test's streams (an invalid one is a 400, not a 404).
OTHER_ACCOUNT = "5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e"


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip(tmp_path_factory.mktemp("clips"))


def ws_uri(facade: Service, stream_id: str, account_id: str | None = None) -> str:
    uri = f"ws://{facade.address}/1/ws?stream_id={stream_id}"
    return uri + (f"&account_id={account_id}" if account_id else "")


async def test_file_stream_with_both_analytics(
    http: aiohttp.ClientSession, base_url: str, facade: Service, sample: Path
) -> None:
    # Created paused so that the WebSocket is listening before processing starts.
    stream_id = await create(http, base_url, file_stream(sample, BOTH, status="pause"))
    try:
        reader = await watch(ws_uri(facade, stream_id), until=FINAL, timeout=120)
        await patch(http, base_url, stream_id, "pending")
        messages = await reader
        stream = await get(http, base_url, stream_id)
    finally:
        await delete(http, base_url, stream_id)

    assert statuses(messages) == ["pause", "pending", "in_progress", "done"], statuses(messages)
    assert all(set(m) == {"stream_status", "error", "analytics_results"} for m in messages)
    expected = truth(sample)["frames"]

    crowd = [
        m["analytics_results"]["people_counter"]
        for m in messages
        if "people_counter" in m["analytics_results"]
    ]
    assert len(crowd) >= 3
    for event in crowd:
        assert event["event_type"] == "crowd" and event["stream_id"] == stream_id
        frame = expected[event["overview"]["frame_number"]]
        assert event["overview"]["frame_number"] % 5 == 0  # the stream's sampling rate
        # Small, partly visible people may be missed; a count above the truth never happens.
        assert 1 <= event["people_count"] <= len(frame["objects"]), (event["people_count"], frame)
        for detection in event["detections"]:
            rect = detection["rect"]
            box = [rect["x"], rect["y"], rect["width"], rect["height"]]
            # The truth boxes are whole photographs: a person lies inside one of them.
            assert max(inside(box, o["box"]) for o in frame["objects"]) > 0.8, (box, frame["objects"])
        assert len(event["overview"]["people_coordinates"]) == event["people_count"]

    tracks = [
        m["analytics_results"]["human_tracking"]
        for m in messages
        if "human_tracking" in m["analytics_results"]
    ]
    starts = [t for t in tracks if t["phase"] == "start"]
    assert starts, "no face track started"
    for event in starts:
        frame = expected[event["frame_number"]]
        rect = event["face_detection"]["rect"]
        box = [rect["x"], rect["y"], rect["width"], rect["height"]]
        faces = [o["face"] for o in frame["objects"] if o["face"]]
        assert max(iou(box, face) for face in faces) > 0.3 or max(inside(box, f) for f in faces) > 0.8, faces
        assert event["gender"] in ("female", "male") and 1 <= event["age"] <= 90
    ended = {t["track_id"] for t in tracks if t["phase"] == "end"}
    assert {t["track_id"] for t in starts} <= ended  # every track ends by the end of the file

    assert stream["status"] == "done" and stream["error"] is None
    stats = stream["statistics"]
    assert stats["frames_decoded"] == len(expected)
    assert stats["frames_processed"] == len(expected) // 5
    assert stats["frames_dropped"] == 0  # a file is never dropped from, it waits


async def test_stream_resource_and_listing(http: aiohttp.ClientSession, base_url: str, sample: Path) -> None:
    account = "9f0d6a8e-6d1f-4d2a-9a51-1a2b3c4d5e6f"
    body = file_stream(sample, BOTH[:1], status="pause", account_id=account, description="lobby")
    stream_id = await create(http, base_url, body)
    try:
        stream = await get(http, base_url, stream_id)
        assert (
            stream["account_id"] == account
            and stream["description"] == "lobby"
            and stream["status"] == "pause"
        )
        assert stream["analytics"][0]["parameters"]["probe_count"] == 1  # as created, defaults filled in
        assert stream["create_time"].endswith("Z") and stream["statistics"]["last_error"] is None
        async with http.get(f"{base_url}/1/streams", params={"account_id": account}) as resp:
            listed = await resp.json()
        assert listed["count"] == 1 and listed["streams"][0]["stream_id"] == stream_id
        async with http.get(
            f"{base_url}/1/streams", params={"status": "pause", "page": "1", "page_size": "1"}
        ) as resp:
            page = await resp.json()
        assert len(page["streams"]) == 1 and page["count"] >= 1
        async with http.get(
            f"{base_url}/1/streams/{stream_id}", params={"account_id": OTHER_ACCOUNT}
        ) as resp:
            assert resp.status == 404  # another account's stream is invisible
        async with http.get(f"{base_url}/1/analytics") as resp:
            catalogue = {a["name"]: a for a in (await resp.json())["analytics"]}
        assert catalogue["people_counter"]["models"] == ["person_detector"]
        assert catalogue["human_tracking"]["models"] == [
            "face_detector",
            "face_attributes",
            "person_detector",
        ]
        assert catalogue["line_crossing"]["models"] == ["person_detector"]
        assert "probe_count" in catalogue["people_counter"]["parameters_schema"]["properties"]
        async with http.delete(f"{base_url}/1/streams/{stream_id}") as resp:
            assert resp.status == 204
        async with http.get(f"{base_url}/1/streams/{stream_id}") as resp:
            assert resp.status == 404
            assert_luna_error(await resp.json(), 47004)
    finally:
        await delete(http, base_url, stream_id)  # 404 once the test has deleted it


async def test_delete_ends_watchers(
    http: aiohttp.ClientSession, base_url: str, facade: Service, sample: Path
) -> None:
    stream_id = await create(http, base_url, file_stream(sample, [], status="pause"))
    reader = await watch(ws_uri(facade, stream_id), timeout=20)
    async with http.delete(f"{base_url}/1/streams/{stream_id}") as resp:
        assert resp.status == 204
    messages = await reader  # returns because the server closed the socket
    assert messages[-1]["stream_status"] == "stop" and messages[-1]["error"] == "stream deleted"


async def test_ws_rejects_before_upgrade(http: aiohttp.ClientSession, base_url: str, sample: Path) -> None:
    async with http.get(f"{base_url}/1/ws", params={"stream_id": "nope"}) as resp:
        assert resp.status == 400
        assert_luna_error(await resp.json(), 12012)
    async with http.get(
        f"{base_url}/1/ws", params={"stream_id": "70c75b04-1ec8-4aa1-930c-ddad9e47b54b"}
    ) as resp:
        assert resp.status == 404
        assert_luna_error(await resp.json(), 47004)
    account = "1d7e9c2a-3b4f-4a6b-8c9d-0e1f2a3b4c5d"
    stream_id = await create(http, base_url, file_stream(sample, [], status="pause", account_id=account))
    try:
        async with http.get(
            f"{base_url}/1/ws", params={"stream_id": stream_id, "account_id": OTHER_ACCOUNT}
        ) as resp:
            assert resp.status == 404  # another account's stream is invisible
    finally:
        await delete(http, base_url, stream_id)


@pytest.mark.parametrize(
    ("mutate", "code", "path"),
    [
        (
            lambda b: b["analytics"].__setitem__(0, {"analytic_name": "no_such"}),
            12027,
            "analytics[0].analytic_name",
        ),
        (
            lambda b: b["analytics"][0]["parameters"].__setitem__("probe_count", "three"),
            12027,
            "analytics[0].parameters.probe_count",
        ),
        (lambda b: b["data"].__setitem__("reference", "ftp://127.0.0.1/x.mp4"), 12027, "data.reference"),
        (lambda b: b["data"].__setitem__("reference", "/nonexistent/clip.mp4"), 12027, "data.reference"),
        (lambda b: b["data"].__setitem__("rotation", 45), 12027, "data.rotation"),
        (lambda b: b.__setitem__("account_id", "not-a-uuid"), 12027, "account_id"),
        (lambda b: b.__setitem__("name", "n" * 257), 12027, "name"),
        (lambda b: b.__setitem__("name", "n" * 1_000_000), 12027, "name"),
        (lambda b: b.__setitem__("description", "d" * 4097), 12027, "description"),
    ],
)
async def test_bad_input_is_rejected_with_the_field_path(
    http: aiohttp.ClientSession, base_url: str, sample: Path, mutate: object, code: int, path: str
) -> None:
    body = file_stream(sample, [dict(BOTH[0], parameters=dict(BOTH[0]["parameters"]))])
    mutate(body)  # type: ignore[operator]
    async with http.post(f"{base_url}/1/streams", json=body) as resp:
        assert resp.status == 400
        payload = await resp.json()
    assert_luna_error(payload, code)
    assert payload["path"] == path and path in payload["detail"]


@pytest.mark.parametrize(
    ("parameters", "path"),
    [
        ('{"probe_count": 1e400}', "analytics[0].parameters.probe_count"),
        ('{"probe_count": -1e400}', "analytics[0].parameters.probe_count"),
        ('{"roi": {"x": 0, "y": 0, "width": 1e400, "height": 5}}', "analytics[0].parameters.roi.width"),
        ('{"extra": [1, {"deep": -1e999}]}', "analytics[0].parameters.extra[1].deep"),
    ],
)
async def test_non_finite_parameters_are_a_400_with_the_path(
    http: aiohttp.ClientSession, base_url: str, sample: Path, parameters: str, path: str
) -> None:
    # JSON's 1e400 is a valid number that no double holds: it parses as infinity. Raw text, since
    # a client library would render float("inf") as the non-JSON token Infinity instead.
    analytic = '{"analytic_name": "people_counter", "parameters": ' + parameters + "}"
    body = '{"data": {"reference": ' + json.dumps(str(sample)) + '}, "analytics": [' + analytic + "]}"
    headers = {"Content-Type": "application/json"}
    async with http.post(f"{base_url}/1/streams", data=body.encode(), headers=headers) as resp:
        assert resp.status == 400, await resp.text()
        payload = await resp.json()
    assert_luna_error(payload, 12027)
    assert payload["path"] == path and "finite" in payload["detail"]
    async with http.get(f"{base_url}/healthcheck") as resp:
        assert resp.status == 200  # and the service is fine


@pytest.mark.parametrize(
    ("depth", "path"),
    [
        (40, "analytics[0].parameters" + ".a" * 20),
        (300, "analytics[0].parameters" + ".a" * 20),
    ],
)
async def test_deeply_nested_parameters_are_a_400_with_the_path(
    http: aiohttp.ClientSession, base_url: str, sample: Path, depth: int, path: str
) -> None:
    # 40 objects deep is valid JSON that protobuf's decoder in the core could not read back.
    parameters = '{"a": ' * depth + "1" + "}" * depth
    analytic = '{"analytic_name": "people_counter", "parameters": ' + parameters + "}"
    body = '{"data": {"reference": ' + json.dumps(str(sample)) + '}, "analytics": [' + analytic + "]}"
    headers = {"Content-Type": "application/json"}
    async with http.post(f"{base_url}/1/streams", data=body.encode(), headers=headers) as resp:
        assert resp.status == 400, await resp.text()
        payload = await resp.json()
    assert_luna_error(payload, 12027)
    assert payload["path"] == path and "nested too deeply" in payload["detail"]


async def test_bad_stream_ids(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/1/streams/not-a-uuid") as resp:
        assert resp.status == 400
        assert_luna_error(await resp.json(), 12012)
    async with http.patch(
        f"{base_url}/1/streams/70c75b04-1ec8-4aa1-930c-ddad9e47b54b", json={"status": "pause"}
    ) as r:
        assert r.status == 404
    async with http.get(f"{base_url}/1/streams", params={"status": "sleeping"}) as resp:
        assert resp.status == 400
        assert_luna_error(await resp.json(), 12012)


async def test_many_streams_batch_across_streams(
    http: aiohttp.ClientSession, base_url: str, triton: Service, facade: Service, sample: Path
) -> None:
    from lva_core.inference.client import TritonClient

    client = TritonClient(triton.address, shared_memory=False, pool_bytes=0, timeout=5)
    before = (await client.statistics("person_detector"))["model_stats"][0]
    counter = [
        {
            "analytic_name": "people_counter",
            "parameters": {
                "probe_count": 1,
                "people_count_threshold": 0,
                "rate": {"period": 1, "unit": "frame"},
                "event_policy": {"trigger": "period", "interval": 0.01},
            },
        }
    ]
    ids = [await create(http, base_url, file_stream(sample, counter, status="pause")) for _ in range(8)]
    try:
        readers = [await watch(ws_uri(facade, i), until=FINAL, timeout=180) for i in ids]
        for stream_id in ids:
            await patch(http, base_url, stream_id, "pending")
        received = await asyncio.gather(*readers)
        streams = [await get(http, base_url, i) for i in ids]
    finally:
        for stream_id in ids:
            await delete(http, base_url, stream_id)
    after = (await client.statistics("person_detector"))["model_stats"][0]
    await client.close()
    assert all(s["status"] == "done" for s in streams), [s["error"] for s in streams]
    processed = streams[0]["statistics"]["frames_processed"]
    assert processed > 0  # else every check below holds of nothing
    assert all(s["statistics"]["frames_processed"] == processed for s in streams)
    for stream_id, messages in zip(ids, received, strict=True):
        crowd = [m["analytics_results"]["people_counter"] for m in messages if m["analytics_results"]]
        assert len(crowd) == processed  # every stream got every one of its own events
        assert all(event["stream_id"] == stream_id for event in crowd)
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert inferences >= 8 * processed
    assert executions < inferences  # frames of different streams ran in one batch


async def test_resume_is_idempotent(http: aiohttp.ClientSession, base_url: str, sample: Path) -> None:
    stream_id = await create(http, base_url, file_stream(sample, [], status="pause"))
    try:
        assert (await patch(http, base_url, stream_id, "pause"))["status"] == "pause"
        # However the worker's timing falls (pending, in_progress, done), a repeated resume is a 200.
        answers = [(await patch(http, base_url, stream_id, "pending"))["status"] for _ in range(3)]
        assert set(answers) <= {"pending", "in_progress", "done"}, answers
    finally:
        async with http.delete(f"{base_url}/1/streams/{stream_id}") as resp:
            assert resp.status == 204


async def test_pending_retries_a_restarting_stream_now(http: aiohttp.ClientSession, base_url: str) -> None:
    # Nothing listens on port 1: every attempt fails at once, then the stream waits 60 s.
    body = {
        "data": {"reference": "rtsp://127.0.0.1:1/nothing", "type": "stream"},
        "analytics": [],
        "autorestart": {"restart": 1, "attempt_count": 5, "delay": 60},
    }
    stream_id = await create(http, base_url, body)
    try:
        first = await wait_status(http, base_url, stream_id, {"restart"}, timeout=20)
        assert first["statistics"]["reconnects"] == 1
        retried = await patch(http, base_url, stream_id, "pending")
        assert retried["status"] in ("pending", "restart")
        # The next attempt comes at once, not after the 60 s backoff, with the budget afresh.
        deadline = asyncio.get_running_loop().time() + 15
        while (stream := await get(http, base_url, stream_id))["statistics"]["reconnects"] < 2:
            assert asyncio.get_running_loop().time() < deadline, stream
            await asyncio.sleep(0.2)
        assert stream["status"] == "restart" and "connection_refused" in stream["error"]
    finally:
        async with http.delete(f"{base_url}/1/streams/{stream_id}") as resp:
            assert resp.status == 204


async def test_patch_needs_a_status_and_paging_must_not_be_negative(
    http: aiohttp.ClientSession, base_url: str, sample: Path
) -> None:
    stream_id = await create(http, base_url, file_stream(sample, [], status="pause"))
    try:
        async with http.patch(f"{base_url}/1/streams/{stream_id}", json={}) as resp:
            assert resp.status == 400
            body = await resp.json()
        assert_luna_error(body, 12027)
        assert body["path"] == "status"
        async with http.patch(f"{base_url}/1/streams/{stream_id}", json={"status": "done"}) as resp:
            assert resp.status == 400  # a user may only pause or resume
        async with http.get(f"{base_url}/1/streams", params={"page": "-1"}) as resp:
            assert resp.status == 400
            assert_luna_error(await resp.json(), 12012)
    finally:
        await delete(http, base_url, stream_id)
