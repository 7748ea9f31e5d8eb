"""The video source against real H.264: files, a real RTSP server, HTTP and HLS from a local server.

Clips are made by ``lva_testkit/clips.py`` (real photographs, x264 via PyAV); the RTSP
server is GStreamer's (``lva_testkit/rtsp_server.py``). Failures are real ones: nothing listening,
a missing file, corrupt bytes, a 404, a killed server, a frozen (SIGSTOP) server.

Why one file of over 400 lines: the clips and the RTSP, HTTP and HLS servers, built once per
module, serve every test of the source.
"""

from __future__ import annotations

import functools
import http.server
import itertools
import json
import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from lva_core.inference.frame_format import FrameFormat
from lva_core.pipeline import pixels as pixels_module
from lva_core.pipeline.frame import Frame
from lva_core.pipeline.geometry import rect_to_rotated, rect_to_source
from lva_core.pipeline.source import hwaccel
from lva_core.pipeline.source.errors import SourceError, classify
from lva_core.pipeline.source.reader import VideoSource
from lva_core.pipeline.source.reference import validate_reference
from lva_core.pipeline.source.spec import SourceSpec
from lva_core.pipeline.source.transform import FrameTransform
from lva_core.runtime import procfs
from lva_testkit import rtsp_server
from lva_testkit.clips import make_clip, truth_path
from lva_testkit.ports import refused_port

FPS = 25
SIZE = (640, 360)
SECONDS = 4  # four keyframes (one a second): enough to see keyframe skipping engage


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def clip(media: Path) -> Path:
    return make_clip(media / "clip.mp4", seconds=SECONDS, fps=FPS, size=SIZE)


@pytest.fixture(scope="module")
def long_gop_clip(media: Path) -> Path:
    return make_clip(media / "gop50.mp4", seconds=SECONDS, fps=FPS, size=SIZE, keyint=50)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_root(media: Path) -> Iterator[str]:
    """A plain HTTP server (no range requests) serving the media folder."""
    handler = functools.partial(_QuietHandler, directory=str(media))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def require_rtsp() -> None:
    if not rtsp_server.available():
        if os.environ.get("LVA_SKIP_RTSP_TESTS") == "1":
            pytest.skip("GStreamer's RTSP server is not installed")
        pytest.fail(
            "GStreamer's RTSP server is missing: apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi "
            "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad "
            "(or set LVA_SKIP_RTSP_TESTS=1)"
        )


@pytest.fixture
def rtsp(clip: Path, tmp_path: Path) -> Iterator[rtsp_server.RtspServer]:
    require_rtsp()
    server = rtsp_server.RtspServer(clip, log_path=tmp_path / "rtsp.log").start()
    yield server
    server.stop()


def read_all(reference: str | Path, **spec: Any) -> tuple[list[Frame], VideoSource]:
    spec.setdefault("kind", "videofile")
    source = VideoSource(SourceSpec(reference=str(reference), **spec), "test")
    source.open()
    try:
        return list(source.frames()), source
    finally:
        source.close()


def failure(reference: str | Path, **spec: Any) -> SourceError:
    """The SourceError of opening and reading ``reference`` to its end."""
    with pytest.raises(SourceError) as caught:
        read_all(reference, **spec)
    return caught.value


# ---- files: decoding, sampling, geometry ------------------------------------------------------


def test_file_decodes_every_frame_with_numbers_and_offsets(clip: Path) -> None:
    frames, source = read_all(clip)
    count = SECONDS * FPS
    assert [f.frame_number for f in frames] == list(range(count))
    assert [f.time_offset for f in frames] == pytest.approx([i / FPS for i in range(count)], abs=1e-6)
    first = frames[0]
    assert first.image.dtype == np.uint8 and first.image.shape == (SIZE[1], SIZE[0], 3)
    assert first.source_size == SIZE and first.offset == (0, 0) and first.stream_id == "test"
    assert all(b.decoded_at >= a.decoded_at for a, b in itertools.pairwise(frames))
    assert source.stats.decoded == source.stats.packets == source.stats.sampled == count
    assert source.stats.skipped == 0 and source.stats.decode_errors == 0 and source.stats.decode_fps > 0


def test_frames_show_the_photographs_where_the_truth_file_says(clip: Path) -> None:
    from PIL import Image
    from skimage import data

    truth = json.loads(truth_path(clip).read_text())
    assert truth["frame_count"] == SECONDS * FPS and truth["size"] == list(SIZE)
    frames, _ = read_all(clip)
    counts = [len(entry["objects"]) for entry in truth["frames"]]
    assert max(counts) == 3 and min(counts) >= 1  # a few seconds with three people at once
    checked = 0
    for entry, frame in zip(truth["frames"], frames, strict=True):
        for obj in entry["objects"]:
            x, y, w, h = obj["box"]
            assert min(x, y) >= 0 and x + w <= SIZE[0] and y + h <= SIZE[1]
            if obj["name"] == "astronaut" and entry["frame_number"] % 20 == 0:
                # The decoded tile is the photograph, resized, give or take compression.
                photo = np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.Resampling.BICUBIC))
                tile = frame.image[y : y + h, x : x + w].astype(int)
                assert np.abs(tile - photo.astype(int)).mean() < 12
                checked += 1
    assert checked == SECONDS * FPS // 20


def test_make_clip_is_deterministic(media: Path) -> None:
    a = make_clip(media / "a.mp4", seconds=1, size=(320, 180))
    b = make_clip(media / "b.mp4", seconds=1, size=(320, 180))
    assert a.read_bytes() == b.read_bytes()
    assert truth_path(a).read_text() == truth_path(b).read_text().replace('"b.mp4"', '"a.mp4"')


def test_every_fifth_frame(clip: Path) -> None:
    frames, source = read_all(clip, rate_period=5, rate_unit="frame")
    assert [f.frame_number for f in frames] == list(range(0, SECONDS * FPS, 5))
    assert [f.time_offset for f in frames] == pytest.approx([n / FPS for n in range(0, SECONDS * FPS, 5)])
    assert source.stats.sampled == len(frames) and source.stats.decoded == SECONDS * FPS


@pytest.mark.parametrize("per_second", [1, 2, 3, 0.5])
def test_n_frames_per_second(clip: Path, per_second: float) -> None:
    frames, _ = read_all(clip, rate_period=per_second, rate_unit="second")
    assert len(frames) == pytest.approx(SECONDS * per_second, abs=1)
    gaps = np.diff([f.time_offset for f in frames])
    assert gaps == pytest.approx(1 / per_second, abs=1 / FPS + 1e-6)


def test_roi_abs_and_percent_crop_the_right_pixels(clip: Path) -> None:
    full, _ = read_all(clip, rate_period=25)
    absolute, _ = read_all(clip, rate_period=25, roi=(101, 33, 200, 150), roi_mode="abs")
    percent, _ = read_all(clip, rate_period=25, roi=(25, 50, 50, 25), roi_mode="percent")
    for whole, a, p in zip(full, absolute, percent, strict=True):
        assert a.offset == (101, 33) and a.size == (200, 150) and a.source_size == SIZE
        assert np.array_equal(a.image, whole.image[33:183, 101:301])
        assert p.offset == (160, 180) and p.size == (320, 90) and p.source_size == SIZE
        assert np.array_equal(p.image, whole.image[180:270, 160:480])


def test_roi_is_clamped_to_the_frame(clip: Path) -> None:
    frames, _ = read_all(clip, rate_period=50, roi=(600, 300, 500, 500))
    assert frames[0].offset == (600, 300) and frames[0].size == (40, 60)


def test_rotation_90_swaps_width_and_height_and_turns_the_picture(clip: Path) -> None:
    full, _ = read_all(clip, rate_period=25)
    turned, _ = read_all(clip, rate_period=25, rotation=90)
    for whole, frame in zip(full, turned, strict=True):
        assert frame.source_size == (SIZE[1], SIZE[0]) and frame.size == (SIZE[1], SIZE[0])
        # Clockwise: the bottom-left corner of the source is the top-left corner now.
        assert np.array_equal(frame.image[0, 0], whole.image[-1, 0])
        assert np.array_equal(frame.image[0, -1], whole.image[0, 0])
        assert np.array_equal(frame.image, np.rot90(whole.image, k=-1))


def test_hwaccel_auto_falls_back_to_software_with_the_reason(
    clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """decoder.hwaccel auto: NVDEC where a CUDA device opens; here, with no GPU, software, said once."""
    caplog.set_level(logging.INFO, "lva_core.pipeline.source")
    software, _ = read_all(clip, rate_period=25)
    source = VideoSource(
        SourceSpec(reference=str(clip), kind="videofile", rate_period=25, hwaccel="auto"), "hw-1"
    )
    for _ in range(2):  # a reconnection does not say it again
        source.open()
        frames = list(source.frames())
        source.close()
    assert len(frames) == len(software) > 0
    problem = hwaccel.device_problem()
    said = [r.getMessage() for r in caplog.records if "NVDEC" in r.getMessage()]
    if problem is None:  # a machine with a GPU
        assert said == ["decoding with NVDEC (cuda)"]
        return
    assert said == [f"no NVDEC here ({problem}): decoding in software"]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, software, strict=True))


def test_hwaccel_cuda_insists_and_fails_the_stream_for_good_without_a_device(clip: Path) -> None:
    with pytest.raises(ValueError, match="hwaccel must be one of"):
        SourceSpec(reference=str(clip), hwaccel="vaapi")
    if hwaccel.device_problem() is None:  # a machine with a GPU: it decodes there
        frames, _ = read_all(clip, rate_period=25, hwaccel="cuda")
        assert frames
        return
    error = failure(clip, hwaccel="cuda")
    assert error.kind == "unsupported_codec"  # not retried (pipeline/worker.py)
    assert "hardware decoding (decoder.hwaccel: cuda) is unavailable here" in str(error)


def test_the_hot_path_builds_one_swscale_context_per_format_not_per_frame(
    clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over 200 frames, in three formats at once, the stream builds three reformatters (each one
    swscale context, reused: sws_getCachedContext keeps it while the sizes stay) and the pixels
    are PyAV's own: full RGB equal to ``to_ndarray("rgb24")``, I420 to ``to_ndarray("yuv420p")``.
    ``to_ndarray(format=...)`` would build a context, and its slice threads, for every frame."""
    built: list[object] = []
    real = pixels_module.VideoReformatter

    def counting() -> object:
        built.append(real())
        return built[-1]

    monkeypatch.setattr(pixels_module, "VideoReformatter", counting)
    transform = FrameTransform(SourceSpec(reference=str(clip)))
    scaled, i420 = FrameFormat("rgb", (300, 300)), FrameFormat("i420")
    frames = 0
    for frame in itertools.islice(_looped(clip), 200):
        pixels, offset, size = transform(frame)
        full = pixels.rgb()
        if frames % 50 == 0:
            assert np.array_equal(full, frame.to_ndarray(format="rgb24")), frames
            assert np.array_equal(pixels.array(i420), frame.to_ndarray(format="yuv420p")), frames
        assert pixels.array(scaled).shape == (300, 300, 3)
        assert (offset, size) == ((0, 0), (frame.width, frame.height))
        frames += 1
    assert frames == 200
    # Full RGB; the 300x300 format's two steps (scaled in YUV, then converted); I420 needs none.
    assert len(built) == 3, built
    assert transform.converter.contexts == 3


def _looped(clip: Path) -> Iterator[Any]:
    """The clip's frames, over and over."""
    while True:
        with av.open(str(clip)) as container:
            yield from container.decode(video=0)


@pytest.mark.parametrize("rotation", [90, 180, 270])
@pytest.mark.parametrize(("roi", "mode"), [((13, 7, 101, 55), "abs"), ((10.5, 20.3, 33.3, 41.1), "percent")])
def test_rotation_with_roi_matches_numpy(
    clip: Path, rotation: int, roi: tuple[float, float, float, float], mode: str
) -> None:
    # The ROI is cropped before rotating, on even coordinates, and trimmed after: pixel-exact.
    full, _ = read_all(clip, rate_period=50)
    got, _ = read_all(clip, rate_period=50, rotation=rotation, roi=roi, roi_mode=mode)
    for whole, frame in zip(full, got, strict=True):
        expected = np.rot90(whole.image, k=-rotation // 90)
        x, y = frame.offset
        w, h = frame.size
        assert frame.source_size == (expected.shape[1], expected.shape[0])
        assert np.array_equal(frame.image, expected[y : y + h, x : x + w])


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_rectangles_map_between_rotated_and_source_frames(rotation: int) -> None:
    width, height = 64, 36
    rotated = (5, 7, 11, 13)
    source = rect_to_source(rotated, rotation, width, height)
    assert rect_to_rotated(source, rotation, width, height) == rotated
    marks = np.zeros((height, width), dtype=np.uint8)
    sx, sy, sw, sh = source
    marks[sy : sy + sh, sx : sx + sw] = 1
    turned = np.rot90(marks, k=-rotation // 90)
    x, y, w, h = rotated
    assert turned[y : y + h, x : x + w].all() and turned.sum() == w * h


# ---- decoding only what is needed -------------------------------------------------------------


@pytest.mark.parametrize(("period", "unit"), [(1, "second"), (0.5, "second"), (25, "frame"), (50, "frame")])
def test_keyframe_skipping_decodes_less_and_delivers_the_same_frames(
    clip: Path, period: float, unit: str
) -> None:
    skipping, fast = read_all(clip, rate_period=period, rate_unit=unit)
    full, slow = read_all(clip, rate_period=period, rate_unit=unit, keyframe_skip=False)
    assert [(f.frame_number, f.time_offset) for f in skipping] == [
        (f.frame_number, f.time_offset) for f in full
    ]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(skipping, full, strict=True))
    assert slow.stats.decoded == SECONDS * FPS and not slow.stats.keyframes_only
    # Engages after three keyframes (at frame 50), so the last two GOPs are keyframes only.
    assert fast.stats.keyframes_only
    assert fast.stats.decoded <= SECONDS * FPS - 40
    assert fast.stats.skipped == SECONDS * FPS - fast.stats.decoded


def test_no_keyframe_skipping_when_the_gop_is_longer_than_the_period(long_gop_clip: Path) -> None:
    frames, source = read_all(long_gop_clip, rate_period=1, rate_unit="second")
    assert [f.frame_number for f in frames] == [0, 25, 50, 75]
    assert source.stats.decoded == SECONDS * FPS and not source.stats.keyframes_only


def test_no_keyframe_skipping_when_the_frames_wanted_are_not_keyframes(clip: Path) -> None:
    frames, source = read_all(clip, rate_period=10, rate_unit="frame")
    assert [f.frame_number for f in frames] == list(range(0, SECONDS * FPS, 10))
    assert source.stats.decoded == SECONDS * FPS and not source.stats.keyframes_only


# ---- failures: classified -------------------------------------------------------------------


def test_missing_file_is_not_found(media: Path) -> None:
    with pytest.raises(SourceError) as caught:
        validate_reference(str(media / "nope.mp4"), "videofile", None)
    assert caught.value.kind == "not_found"
    assert failure(media / "nope.mp4").kind == "not_found"
    assert failure(f"file://{media}/nope.mp4").kind == "not_found"
    assert failure(media).kind == "not_found"  # a directory


@pytest.mark.parametrize(
    "reference",
    [
        "ftp://127.0.0.1/clip.mp4",
        "udp://127.0.0.1:1234",
        "concat:/etc/passwd|/etc/hosts",
        "pipe:0",
        "rtsp:///x",
        "",
    ],
)
def test_unsupported_schemes_are_refused(reference: str) -> None:
    with pytest.raises(SourceError) as caught:
        validate_reference(reference, "stream", None)
    assert caught.value.kind == "unsupported_scheme"
    with pytest.raises(SourceError) as opened:
        VideoSource(SourceSpec(reference=reference), "test").open()
    assert opened.value.kind == "unsupported_scheme"


def test_paths_outside_the_allowed_directories_are_refused(media: Path, clip: Path) -> None:
    allowed = [media]
    validate_reference(str(clip), "videofile", allowed)
    validate_reference(f"file://{clip}", "videofile", allowed)
    for outside in (f"{media}/../../../../etc/passwd", "/etc/passwd", f"file:///{media}/../x.mp4"):
        with pytest.raises(SourceError) as caught:
            validate_reference(outside, "videofile", allowed)
        assert caught.value.kind == "unsupported_scheme"
    link = media / "link.mp4"
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/passwd")
    with pytest.raises(SourceError):
        validate_reference(str(link), "videofile", allowed)


def test_garbage_and_empty_files_are_corrupt_data(media: Path) -> None:
    (media / "garbage.mp4").write_bytes(random.Random(0).randbytes(50_000))
    (media / "empty.mp4").write_bytes(b"")
    assert failure(media / "garbage.mp4").kind == "corrupt_data"
    assert failure(media / "empty.mp4").kind == "corrupt_data"


def garbled_copy(clip: Path, target: Path, seed: int) -> Path:
    """``clip`` with its second half overwritten by random bytes: good frames, then broken ones."""
    data = bytearray(clip.read_bytes())
    rng = random.Random(seed)
    for i in range(len(data) // 2, len(data)):
        data[i] = rng.randrange(256)
    target.write_bytes(bytes(data))
    return target


def test_garbled_media_data_is_corrupt_data_after_the_good_frames(media: Path, clip: Path) -> None:
    garbled_copy(clip, media / "garbled.mp4", seed=1)
    source = VideoSource(SourceSpec(reference=str(media / "garbled.mp4"), kind="videofile"), "test")
    source.open()
    frames: list[Frame] = []
    with pytest.raises(SourceError) as caught:
        frames.extend(source.frames())
    source.close()
    assert caught.value.kind == "corrupt_data"
    assert 0 < len(frames) < SECONDS * FPS and source.stats.decode_errors >= 25


def test_a_held_error_does_not_keep_the_decoder_alive(media: Path, clip: Path) -> None:
    # A stream worker holds the error it raised (through a reference cycle, until a full garbage
    # collection): the decoder, its FFmpeg threads and buffers, must not stay alive with it.
    garbled = garbled_copy(clip, media / "garbled-held.mp4", seed=2)

    def threads() -> set[int]:
        return procfs.thread_ids(os.getpid())

    held: list[SourceError] = []
    decoder_threads: set[int] = set()  # threads that appeared while a decoder ran
    before = threads()

    def decode() -> None:  # in a thread of its own, as the worker decodes
        source = VideoSource(SourceSpec(reference=str(garbled), kind="videofile"), "t")
        source.open()
        try:
            for _frame in source.frames():
                decoder_threads.update(threads() - before - {threading.get_native_id()})
        except SourceError as error:
            held.append(error)
        finally:
            source.close()

    for _ in range(3):
        thread = threading.Thread(target=decode)
        thread.start()
        thread.join()
    assert len(held) == 3 and all(e.kind == "corrupt_data" for e in held)
    # FFmpeg decodes with threads of its own on a multi-core machine; they end with the decoder.
    # Only those are compared: the test process runs other suites' threads too (gRPC, executors),
    # which may start or end meanwhile.
    assert decoder_threads or (os.cpu_count() or 1) == 1
    left = decoder_threads & threads()
    assert not left, f"{len(left)} decoder threads left with {len(held)} errors held"


def test_a_truncated_file_ends_cleanly_at_its_last_whole_frame(media: Path, clip: Path) -> None:
    # Decided: a cut-off file is played up to where it was cut (as players do), not failed;
    # the broken last packet is counted as a decode error.
    data = clip.read_bytes()
    (media / "truncated.mp4").write_bytes(data[: int(len(data) * 0.6)])
    frames, source = read_all(media / "truncated.mp4")
    assert 0 < len(frames) < SECONDS * FPS
    assert [f.frame_number for f in frames] == list(range(len(frames)))
    assert source.stats.decode_errors <= 1


def test_unsupported_codec(media: Path, clip: Path) -> None:
    (media / "unknown.mp4").write_bytes(clip.read_bytes().replace(b"avc1", b"zzzz"))
    assert failure(media / "unknown.mp4").kind == "unsupported_codec"
    with av.open(str(media / "audio.m4a"), "w") as container:  # no video at all
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        for index in range(5):
            frame.pts = index * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert failure(media / "audio.m4a").kind == "unsupported_codec"


def test_nothing_listening_is_connection_refused_at_once() -> None:
    open_timeout = 10.0
    for scheme in ("rtsp", "http"):
        with refused_port() as port:  # nothing listens there, and nothing can start to
            started = time.monotonic()
            error = failure(f"{scheme}://127.0.0.1:{port}/stream", kind="stream", open_timeout=open_timeout)
            took = time.monotonic() - started
        assert error.kind == "connection_refused"
        # "At once": not after the open timeout, which a refused connection must not wait out.
        # Half of it leaves a loaded machine seconds of slack.
        assert took < open_timeout / 2


def test_a_server_that_never_answers_is_a_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        for scheme in ("rtsp", "http"):
            started = time.monotonic()
            error = failure(
                f"{scheme}://127.0.0.1:{port}/x", kind="stream", open_timeout=1.5, read_timeout=1.0
            )
            assert error.kind == "timeout", error
            # Ended by its timeouts (1.5 s to open, 1 s to read), not a hang; slack for a loaded machine.
            assert time.monotonic() - started < 1.5 + 1.0 + 3.0


def test_unresolvable_host_is_not_found() -> None:
    assert failure("rtsp://no-such-host.invalid/stream", kind="stream").kind == "not_found"


def test_http_404_is_not_found(http_root: str, clip: Path) -> None:
    assert failure(f"{http_root}/missing.mp4").kind == "not_found"
    assert failure(f"{http_root}/missing/index.m3u8", kind="stream").kind == "not_found"


def test_classify_names_what_pyav_raises() -> None:
    assert classify(av.error.ExitError(1414092869, "Immediate exit requested")).kind == "timeout"
    assert classify(ConnectionRefusedError(111, "refused")).kind == "connection_refused"
    assert classify(FileNotFoundError(2, "nope")).kind == "not_found"
    assert classify(ValueError("odd"), elapsed=5.0, timeout=5.0).kind == "timeout"
    assert classify(RuntimeError("odd")).kind == "io_error"
    original = SourceError("corrupt_data", "x")
    assert classify(original) is original


# ---- HTTP and HLS ---------------------------------------------------------------------------


def test_http_mp4_decodes(http_root: str, clip: Path) -> None:
    frames, _ = read_all(f"{http_root}/{clip.name}", rate_period=25)
    assert [f.frame_number for f in frames] == [0, 25, 50, 75]


def test_hls_playlist_decodes(http_root: str, media: Path, clip: Path) -> None:
    folder = media / "hls"
    folder.mkdir(exist_ok=True)
    with av.open(str(clip)) as source:
        video = source.streams.video[0]
        options = {
            "hls_time": "1",
            "hls_playlist_type": "vod",
            "hls_segment_filename": str(folder / "seg%03d.ts"),
        }
        with av.open(str(folder / "index.m3u8"), "w", format="hls", options=options) as playlist:
            out = playlist.add_stream_from_template(video)
            for packet in source.demux(video):
                if packet.dts is not None:
                    packet.stream = out
                    playlist.mux(packet)
    assert len(list(folder.glob("seg*.ts"))) == SECONDS
    url = f"{http_root}/hls/index.m3u8"
    frames, _ = read_all(url, kind="videofile")
    assert [f.frame_number for f in frames] == list(range(SECONDS * FPS))
    assert frames[-1].time_offset == pytest.approx((SECONDS * FPS - 1) / FPS, abs=1e-3)
    # Read as a live stream, the end of the playlist is the end of the stream: a failure.
    source = VideoSource(SourceSpec(reference=url, kind="stream"), "hls")
    source.open()
    with pytest.raises(SourceError) as caught:
        for _ in source.frames():
            pass
    source.close()
    assert caught.value.kind == "end_of_stream" and source.stats.decoded == SECONDS * FPS


# ---- RTSP from a real server ----------------------------------------------------------------


def open_rtsp(server: rtsp_server.RtspServer, **spec: Any) -> VideoSource:
    spec.setdefault("open_timeout", 5.0)
    spec.setdefault("read_timeout", 2.0)
    source = VideoSource(SourceSpec(reference=server.url, kind="stream", **spec), "cam")
    source.open()
    return source


def test_rtsp_stream_is_live_and_loops(rtsp: rtsp_server.RtspServer) -> None:
    source = open_rtsp(rtsp, rate_period=5)
    started = time.monotonic()
    frames: list[Frame] = []
    for frame in source.frames():
        frames.append(frame)
        if frame.time_offset >= SECONDS + 0.5:  # past the end of the file: the server loops
            break
    elapsed = time.monotonic() - started
    source.close()
    numbers = [f.frame_number for f in frames]
    assert numbers == sorted(numbers) and all(n % 5 == 0 for n in numbers) and numbers[0] == 0
    assert frames[0].time_offset == 0.0
    assert all(b.time_offset > a.time_offset for a, b in itertools.pairwise(frames))
    assert frames[0].image.shape == (SIZE[1], SIZE[0], 3)
    assert elapsed > SECONDS - 1.5  # paced at real time (the server sends its first second at once)


def test_network_sources_probe_briefly_and_files_as_ffmpeg_does() -> None:
    def options(reference: str, **spec: Any) -> dict[str, str]:
        return VideoSource(SourceSpec(reference=reference, **spec), "t")._url_and_options()[1]

    assert options("rtsp://cam/1")["analyzeduration"] == "250000"
    assert options("http://cam/live.m3u8", probe_duration=1.5)["analyzeduration"] == "1500000"
    assert "analyzeduration" not in options("rtsp://cam/1", probe_duration=0)  # FFmpeg's own
    assert "analyzeduration" not in options("/media/clip.mp4", kind="videofile")
    with pytest.raises(ValueError, match="probe_duration"):
        SourceSpec(reference="rtsp://cam/1", probe_duration=-1)


def test_rtsp_short_probe_finds_what_ffmpegs_full_probe_finds(rtsp: rtsp_server.RtspServer) -> None:
    # The brief probe must not lose the format: the same codec, size, rate and time base.
    found = []
    for probe in (0.0, 0.25):
        source = open_rtsp(rtsp, probe_duration=probe)
        stream = source._stream
        found.append(
            (
                stream.codec_context.name,
                stream.codec_context.width,
                stream.codec_context.height,
                stream.average_rate or stream.guessed_rate,
                stream.time_base,
            )
        )
        frame = next(source.frames())
        source.close()
        assert frame.image.shape == (SIZE[1], SIZE[0], 3)
    assert found[0] == found[1] == ("h264", SIZE[0], SIZE[1], FPS, Fraction(1, 90000))


def test_rtsp_killed_server_ends_the_stream(rtsp: rtsp_server.RtspServer) -> None:
    read_timeout = 2.0
    source = open_rtsp(rtsp, read_timeout=read_timeout)
    killed = 0.0
    with pytest.raises(SourceError) as caught:
        for frame in source.frames():
            if frame.frame_number == 30:
                rtsp.stop()
                killed = time.monotonic()
    took = time.monotonic() - killed
    source.close()
    assert caught.value.kind in ("end_of_stream", "io_error", "connection_refused")
    # Ended within the read timeout of the last packet, not a hang; slack for a loaded machine.
    assert took < read_timeout + 3.0


def test_rtsp_frozen_server_times_out(rtsp: rtsp_server.RtspServer) -> None:
    read_timeout = 3.0
    source = open_rtsp(rtsp, read_timeout=read_timeout)
    frozen = 0.0
    try:
        with pytest.raises(SourceError) as caught:
            for frame in source.frames():
                if frame.frame_number == 30:
                    rtsp.freeze()
                    frozen = time.monotonic()
        took = time.monotonic() - frozen
    finally:
        rtsp.thaw()
        source.close()
    assert caught.value.kind == "timeout"
    # Measured read_timeout; without the watchdog for the held-back packet it took twice
    # read_timeout. The upper bound has 2.5 s of slack for a loaded machine and still tells the two
    # apart (twice read_timeout is 6 s).
    assert read_timeout - 0.5 < took < read_timeout + 2.5


def test_rtsp_unknown_path_is_not_found(rtsp: rtsp_server.RtspServer) -> None:
    assert failure(rtsp.url + "-nope", kind="stream").kind == "not_found"


def test_rtsp_slow_reader_drops_frames_instead_of_lagging(rtsp: rtsp_server.RtspServer) -> None:
    # The consumer takes 0.2 s a frame, the source sends 25 frames a second: without dropping,
    # it would be ~5 s behind after 6 s (measured); with max_lag=1 it stays about 1 s behind.
    source = open_rtsp(rtsp, max_lag=1.0)
    started: float | None = None
    worst = 0.0
    for frame in source.frames():
        now = time.monotonic()
        if started is None:
            started = now - frame.time_offset
        worst = max(worst, (now - started) - frame.time_offset)
        if now - started > 6:
            break
        time.sleep(0.2)
    source.close()
    assert source.stats.lag_drops >= 1 and source.stats.skipped > 0
    # The bound is the point: without dropping the reader is ~5 s behind after 6 s; with max_lag
    # 1 s it is about 1 s behind, and 3 s leaves a loaded machine room while telling the two apart.
    assert worst < 3.0


def test_a_respawning_test_camera_comes_back_at_its_address_until_stopped(clip: Path, tmp_path: Path) -> None:
    # The test harness's own guard against GStreamer's RTSP server aborting under witness streams.
    require_rtsp()
    server = rtsp_server.RtspServer(clip, log_path=tmp_path / "rtsp.log", respawn=True).start()
    try:
        first = server.proc
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)  # as the abort ends it: not through this object
        deadline = time.monotonic() + 20
        while not (server.respawns == 1 and server.alive) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.respawns == 1 and server.alive and server.proc is not first
        source = open_rtsp(server)  # same URL as before
        assert next(source.frames()).image.shape == (SIZE[1], SIZE[0], 3)
        source.close()
    finally:
        server.stop()
    time.sleep(0.6)  # several rounds of the watcher
    assert not server.alive and server.respawns == 1


def test_close_from_another_thread_stops_the_reader(rtsp: rtsp_server.RtspServer) -> None:
    source = open_rtsp(rtsp)
    seen: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            seen.extend(f.frame_number for f in source.frames())
        except BaseException as error:
            errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 20
    while len(seen) <= 10:  # reading, however slowly the machine started it
        assert time.monotonic() < deadline and not errors, (seen, errors)
        time.sleep(0.05)
    source.close()  # deferred to the reader, which returns before its next packet
    reader.join(5.0)  # a packet is 40 ms at 25 fps: the rest is slack for a loaded machine
    assert not reader.is_alive() and not errors
    source.close()  # idempotent


@pytest.mark.parametrize("rotation", [0, 90])
def test_i420_and_scaled_formats_take_the_roi_of_the_picture(clip: Path, rotation: int) -> None:
    """The ROI (odd edges on purpose) in I420 is the RGB picture's rectangle widened to even
    coordinates: converted back, it matches the RGB picture where the two overlap; scaled, it
    is the RGB picture resized."""
    frames, _ = read_all(clip, rate_period=50, rotation=rotation, roi=(13, 7, 301, 155), roi_mode="abs")
    assert frames
    for frame in frames:
        rgb = frame.image.astype(int)
        h, w = rgb.shape[:2]
        planes = frame.pixels.array(FrameFormat("i420"))
        eh, ew = planes.shape[0] * 2 // 3, planes.shape[1]
        assert (ew, eh) == (w + 1, h + 1)  # 13 and 7 are odd: widened by one to 12 and 6
        back = av.VideoFrame.from_ndarray(planes, format="yuv420p").to_ndarray(format="rgb24").astype(int)
        assert np.abs(back[1 : 1 + h, 1 : 1 + w] - rgb).mean() < 2.0
        small = frame.pixels.array(FrameFormat("rgb", (100, 50))).astype(int)
        assert small.shape == (50, 100, 3)
        reference = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame.image), format="rgb24")
        expected = reference.reformat(width=100, height=50, interpolation="AREA").to_ndarray().astype(int)
        assert np.abs(small - expected).mean() < 4.0
        fit = frame.pixels.array(FrameFormat("rgb", (640, 480), "fit"))
        assert fit.shape[1] == 640 or fit.shape[0] == 480
