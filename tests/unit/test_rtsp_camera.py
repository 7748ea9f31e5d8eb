"""The tests' RTSP camera (lva_testkit.rtsp_server) stays live for every client, however they join."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import av

from lva_testkit.clips import clip
from lva_testkit.rtsp_server import RtspServer

FPS = 25
CLIP_SECONDS = 2.0
READ_SECONDS = 5.0


def _frames_in(url: str, delay: float, counts: dict[float, int]) -> None:
    time.sleep(delay)
    frames, started = 0, time.monotonic()
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=5) as container:
        for _ in container.decode(video=0):
            frames += 1
            if time.monotonic() - started > READ_SECONDS:
                break
    counts[delay] = frames


def test_a_client_joining_a_moment_after_another_ends_the_loop_for_neither(tmp_path: Path) -> None:
    # The second client's PLAY made the server seek the shared media, which undid the looping
    # segment seek: both clients saw the end of the stream at the end of the file.
    camera = RtspServer(
        clip(tmp_path, "loop.mp4", seconds=CLIP_SECONDS, size=(160, 120)), tmp_path / "rtsp.log"
    )
    camera.start()
    try:
        counts: dict[float, int] = {}
        readers = [threading.Thread(target=_frames_in, args=(camera.url, d, counts)) for d in (0.0, 0.3)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(READ_SECONDS + 20)
    finally:
        camera.stop()
    # Both read well past the end of the file: it looped for each of them.
    assert sorted(counts) == [0.0, 0.3] and min(counts.values()) > 1.5 * CLIP_SECONDS * FPS, counts
