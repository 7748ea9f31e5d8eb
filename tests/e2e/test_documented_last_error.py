"""An inference failure (docs/streams.md, docs/security.md): the stream goes on, the failure shows in
``statistics.last_error`` as ``<analytic>: <inference error>``, counted in
``lva_inference_errors_total`` by model and LUNA code, and the reference's credentials appear
nowhere: not in the answer, not in the core's log.

The core here maps people_counter's detector to a model Triton does not have, so every
inference of the stream fails with 47102 while its source (a clip over HTTP, with a user, a
password and a token in the URL) keeps working.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lva_testkit.clips import clip
from lva_testkit.documented import delete_stream, http_files, labels, poll, scrape
from lva_testkit.stack import Service, start_core, start_facade
from lva_testkit.streams import EVERY_FRAME_COUNTER, create, get, wait_status

MISSING_MODEL = "no_such_detector"
PASSWORD, TOKEN = "pw-hunter2", "tok-0xdeadbeef"


@pytest.fixture(scope="module")
def broken_stack(log_dir: Path, triton: Service) -> Iterator[tuple[Service, Service]]:
    core = start_core(
        log_dir, triton.address, {"LVA_TRITON__MODELS__PEOPLE_COUNTER__DETECTOR": MISSING_MODEL}
    )
    try:
        facade = start_facade(log_dir, core.address)
        try:
            yield core, facade
        finally:
            facade.stop()
    finally:
        core.stop()


@pytest.fixture(scope="module")
def served_clip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("served")
    clip(directory, "cam.mp4", seconds=4.0, size=(320, 180))
    with http_files(directory) as base:
        yield base


@pytest.fixture
async def stream(
    broken_stack: tuple[Service, Service], served_clip: str, http: aiohttp.ClientSession
) -> AsyncIterator[tuple[str, str]]:
    _, facade = broken_stack
    base_url = f"http://{facade.address}"
    host = served_clip.removeprefix("http://")
    body: dict[str, Any] = {
        "name": "failing-inference",
        "data": {
            "reference": f"http://admin:{PASSWORD}@{host}/cam.mp4?token={TOKEN}",
            # A file over HTTP: every sampled frame is analysed (block), and the end is done.
            "type": "videofile",
            "frame_processing": {"rate": {"period": 5, "unit": "frame"}},
        },
        "analytics": EVERY_FRAME_COUNTER,
    }
    stream_id = await create(http, base_url, body)
    try:
        yield base_url, stream_id
    finally:
        await delete_stream(http, base_url, stream_id)


async def test_an_inference_failure_shows_in_last_error_masked_and_counted(
    broken_stack: tuple[Service, Service],
    stream: tuple[str, str],
    served_clip: str,
    http: aiohttp.ClientSession,
) -> None:
    core, _ = broken_stack
    base_url, stream_id = stream
    metrics_url = f"http://127.0.0.1:{core.metrics_port}/metrics"
    series = ("lva_inference_errors_total", labels(model=MISSING_MODEL, code="47102"))

    async def failed_frames() -> dict[str, Any] | None:
        current = await get(http, base_url, stream_id)
        return current if current["statistics"]["frames_processed"] >= 2 else None

    # The frames keep going through the analytics although every inference fails.
    current = await poll(failed_frames, 120, "frames processed despite the failures")
    assert current["status"] in ("in_progress", "done"), current
    assert current["error"] is None  # an inference failure is not a stream error
    last_error = current["statistics"]["last_error"]
    assert isinstance(last_error, str) and last_error.startswith("people_counter: "), last_error
    assert MISSING_MODEL in last_error
    assert (
        current["data"]["reference"] == f"http://***@{served_clip.removeprefix('http://')}/cam.mp4?token=***"
    )
    answer = str(current)
    assert PASSWORD not in answer and TOKEN not in answer
    # Once the source has ended nothing is in flight, and the counts can be compared exactly.
    ended = await wait_status(http, base_url, stream_id, {"done", "failure"}, 120)
    assert ended["status"] == "done" and ended["error"] is None, ended
    assert ended["statistics"]["frames_processed"] == 20  # every fifth of 100 frames, all analysed
    assert ended["statistics"]["last_error"] == last_error
    counted = (await scrape(http, metrics_url)).get(series, 0.0)
    # One count per failed request to Triton: a batch carries one frame or more.
    assert 1 <= counted <= ended["statistics"]["frames_processed"]
    log = core.log_text()
    assert "failed on frame" in log and MISSING_MODEL in log  # the failure is logged ...
    assert PASSWORD not in log and TOKEN not in log  # ... and the credentials never are
