"""``streams.buffer_size`` and the two buffer strategies (docs/streams.md, "Buffer strategies").

The analysis is made slow on purpose: the core's Triton is a port that never answers, so every
frame's inference waits out ``triton.request_timeout``. A live source (a clip over HTTP, ``type:
stream``) then decodes faster than it is analysed: with a buffer of one frame the oldest
frames are dropped and counted, with a buffer larger than the clip none is. A file (``block``)
drops nothing even with a buffer of one: the decoder waits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lva_testkit.clips import clip
from lva_testkit.documented import delete_stream, http_files, poll, silent_port
from lva_testkit.stack import Service, start_core, start_facade
from lva_testkit.streams import EVERY_FRAME_COUNTER, create, get, wait_status

FRAMES = 10  # 0.4 s at 25 fps, every frame sampled


@pytest.fixture(scope="module")
def silent_triton() -> Iterator[str]:
    with silent_port() as address:
        yield address


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("buffer")
    clip(directory, "cam.mp4", seconds=FRAMES / 25, size=(320, 180))
    with http_files(directory) as base:
        yield directory / "cam.mp4", f"{base}/cam.mp4"


def _stack(log_dir: Path, triton: str, buffer_size: int) -> tuple[Service, Service]:
    core = start_core(
        log_dir,
        triton,
        {"LVA_STREAMS__BUFFER_SIZE": str(buffer_size), "LVA_TRITON__REQUEST_TIMEOUT": "1.0"},
    )
    try:
        return core, start_facade(log_dir, core.address)
    except BaseException:
        core.stop()
        raise


async def _run(http: aiohttp.ClientSession, base_url: str, reference: str, kind: str) -> dict[str, Any]:
    body = {
        "name": f"buffer-{kind}",
        "data": {
            "reference": reference,
            "type": kind,
            "frame_processing": {"rate": {"period": 1, "unit": "frame"}},
        },
        "analytics": EVERY_FRAME_COUNTER,
        "autorestart": {"restart": 0},
    }
    stream_id = await create(http, base_url, body)
    try:
        return await wait_status(http, base_url, stream_id, {"done", "failure"}, 120)
    finally:
        await delete_stream(http, base_url, stream_id)


@pytest.mark.parametrize(("buffer_size", "drops"), [(1, True), (FRAMES + 5, False)])
async def test_a_live_source_drops_the_oldest_only_when_its_buffer_is_full(
    log_dir: Path,
    silent_triton: str,
    served: tuple[Path, str],
    http: aiohttp.ClientSession,
    buffer_size: int,
    drops: bool,
) -> None:
    core, facade = _stack(log_dir, silent_triton, buffer_size)
    try:
        stream = await _run(http, f"http://{facade.address}", served[1], "stream")
    finally:
        facade.stop()
        core.stop()
    stats = stream["statistics"]
    assert stats["frames_decoded"] == FRAMES, stream
    assert stats["last_error"].endswith("no result within 1.0 s")  # the analysis really was slow
    # A live stream that ends (failure: restart is 0) discards what its buffer still holds, so
    # the analysed and the dropped frames add up to at most what was decoded.
    assert stats["frames_processed"] + stats["frames_dropped"] <= FRAMES, stats
    assert stats["frames_processed"] >= 1, stats
    assert (stats["frames_dropped"] > 0) is drops, stats


async def test_a_file_blocks_its_decoder_and_drops_nothing(
    log_dir: Path, silent_triton: str, served: tuple[Path, str], http: aiohttp.ClientSession
) -> None:
    core, facade = _stack(log_dir, silent_triton, 1)
    try:
        stream = await _run(http, f"http://{facade.address}", str(served[0]), "videofile")
    finally:
        facade.stop()
        core.stop()
    stats = stream["statistics"]
    assert stream["status"] == "done"
    assert (stats["frames_decoded"], stats["frames_processed"], stats["frames_dropped"]) == (
        FRAMES,
        FRAMES,
        0,
    )


async def test_dropped_frames_count_over_every_session_of_a_live_stream(
    log_dir: Path, silent_triton: str, served: tuple[Path, str], http: aiohttp.ClientSession
) -> None:
    # The clip over HTTP ends after FRAMES frames; autorestart opens it again, session after session.
    core, facade = _stack(log_dir, silent_triton, 1)
    base_url = f"http://{facade.address}"
    body = {
        "name": "buffer-sessions",
        "data": {
            "reference": served[1],
            "type": "stream",
            "frame_processing": {"rate": {"period": 1, "unit": "frame"}},
        },
        "analytics": EVERY_FRAME_COUNTER,
        "autorestart": {"restart": 1, "attempt_count": 10, "delay": 0.05},
    }
    try:
        stream_id = await create(http, base_url, body)
        try:
            seen: list[dict[str, Any]] = []

            async def three_sessions() -> bool:
                stats = (await get(http, base_url, stream_id))["statistics"]
                seen.append(stats)
                return bool(stats["frames_decoded"] >= 3 * FRAMES and stats["reconnects"] >= 3)

            await poll(three_sessions, 120, "three sessions of the live stream")
        finally:
            await delete_stream(http, base_url, stream_id)
    finally:
        facade.stop()
        core.stop()
    dropped = [stats["frames_dropped"] for stats in seen]
    assert dropped == sorted(dropped), dropped  # a counter: it never goes back at a reconnection
    last = seen[-1]
    assert last["frames_processed"] + last["frames_dropped"] <= last["frames_decoded"], last
    # One session can drop at most FRAMES - 1 frames: more means the sessions' drops add up.
    assert last["frames_dropped"] >= FRAMES, last
