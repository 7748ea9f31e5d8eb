"""A video source: open, demux, decode, sample, rotate, crop and convert, blocking, in one thread.

The stream worker drives a :class:`VideoSource` from a thread of its own: ``open()``, then
``frames()`` until it returns (a video file ended) or raises :class:`SourceError` (the source
failed: the worker restarts it with backoff or gives up). Retrying is not done here.

Decisions, with the measurements behind them (PyAV 18 with its bundled FFmpeg 8):

* **Timeouts.** Network sources get FFmpeg's socket timeout (``timeout``/``rw_timeout``, µs)
  and PyAV's interrupt timeout ``timeout=(open, read)``; without them a frozen source hangs
  forever. On a frozen RTSP server the interrupt fires after ``read_timeout`` but the RTSP
  demuxer then returns the one packet it was holding and blocks for another ``read_timeout``:
  so a packet that took ``read_timeout`` or longer to arrive is itself the timeout, and
  :meth:`VideoSource.frames` raises at once instead of waiting twice.
* **End of a live stream.** A killed RTSP server looks like a clean end of file. For a live
  stream that is a failure (``end_of_stream``) to reconnect from; a video file just ends.
* **Decode only what is needed.** Frames are numbered from packets, not from decoder output, so
  that frames the decoder never produced still count. When the sampling period covers a whole
  keyframe interval (observed, not assumed: three keyframes in a row), the decoder is told to
  skip everything but keyframes (``skip_frame = "NONKEY"``), switching only at a keyframe so
  that references are always complete. On a 30 s 720p clip (keyframe every second) at 1 frame/s
  it reads ~4300 source frames/s instead of ~1270 (3.4x; every frame converted: ~720); the
  frames delivered, their numbers, time offsets and pixels are the same as with full decoding.
* **No lag on live streams.** When the reader falls behind the source's own clock by more
  than ``max_lag`` seconds (an overloaded CPU, a slow consumer), non-key frames are dropped
  before decoding until it is back at the live edge. Measured on RTSP with a consumer taking
  0.2 s a frame: 6.5 s behind after 8 s without it, never more than 1.2 s with ``max_lag=1``.
  Not for HLS: it delivers whole segments at once, so media time is ahead and behind by a
  segment by design, and FFmpeg's HLS demuxer itself skips segments that left the playlist.
* **Pixels.** Only sampled frames are converted, once, by swscale (``to_ndarray("rgb24")``):
  that is the one copy of a frame without rotation, and the ROI is a numpy view of it. Rotation
  is done by FFmpeg filters on the YUV frame, after cropping the ROI there (``crop`` only moves
  pointers): numpy's ``rot90`` plus a contiguous copy costs ~4.5 ms for 720p, ``transpose`` plus
  conversion ~1.4 ms, and ~0.4 ms for half the frame. ``Frame.image`` may have padded rows
  (``strides[0] > width * 3``) when ``width * 3`` is not a multiple of the alignment; pixels
  within a row are contiguous.
* **Corrupt data.** An undecodable packet (bit errors, a truncated file's last frame) is
  counted and skipped, as players do; ``MAX_CONSECUTIVE_DECODE_ERRORS`` in a row, or a file
  that yields no frame at all, is ``corrupt_data``. A file that cannot be parsed is
  ``corrupt_data`` at open.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import math
import re
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import av
import av.error
import numpy as np

from lva_common.config import mask_url
from lva_core.pipeline.frame import Frame

log = logging.getLogger("lva_core.pipeline.source")

SOURCE_KINDS = ("stream", "videofile")
ROI_MODES = ("abs", "percent")
RATE_UNITS = ("frame", "second")
ErrorKind = Literal[
    "connection_refused",
    "timeout",
    "not_found",
    "unsupported_codec",
    "corrupt_data",
    "end_of_stream",
    "unsupported_scheme",
    "io_error",
]
ERROR_KINDS: tuple[ErrorKind, ...] = (
    "connection_refused",
    "timeout",
    "not_found",
    "unsupported_codec",
    "corrupt_data",
    "end_of_stream",
    "unsupported_scheme",
    "io_error",
)
NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
MAX_CONSECUTIVE_DECODE_ERRORS = 25
# Keyframes observed before trusting the interval between them (two intervals).
_KEYFRAMES_TO_TRUST = 3
_EPS = 1e-6
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


class SourceError(Exception):
    """A source failure with its class (``kind``, one of ``ERROR_KINDS``) and a message for people."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind

    def __repr__(self) -> str:
        return f"SourceError({self.kind!r}, {str(self)!r})"


@dataclass
class SourceSpec:
    """What to open and which frames to deliver, as the stream's ``data`` says."""

    reference: str
    kind: str = "stream"  # SOURCE_KINDS: a live stream, or a video file that ends
    rotation: int = 0  # clockwise degrees: 0, 90, 180 or 270
    roi: tuple[float, float, float, float] | None = None  # x, y, width, height in the rotated frame
    roi_mode: str = "abs"  # ROI_MODES: pixels, or percent of the rotated frame
    rate_period: float = 1.0
    rate_unit: str = "frame"  # RATE_UNITS: every Nth frame, or N frames per second
    open_timeout: float = 5.0
    read_timeout: float = 5.0
    # Network sources: seconds FFmpeg reads to learn the format (analyzeduration); 0: FFmpeg's.
    probe_duration: float = 0.25
    # Decode keyframes only when the sampling period allows it (off: always decode everything).
    keyframe_skip: bool = True
    # Live streams only: drop non-key frames before decoding when this far behind the source.
    max_lag: float = 2.0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("kind", self.kind, SOURCE_KINDS),
            ("roi_mode", self.roi_mode, ROI_MODES),
            ("rate_unit", self.rate_unit, RATE_UNITS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
        if self.rotation % 360 not in (0, 90, 180, 270):
            raise ValueError(f"rotation must be 0, 90, 180 or 270, not {self.rotation}")
        if self.rate_period <= 0:
            raise ValueError("rate_period must be positive")
        if not self.probe_duration >= 0:
            raise ValueError("probe_duration must not be negative")


@dataclass
class SourceStats:
    """Counters of one open source. Written by the decoding thread; read from anywhere."""

    packets: int = 0  # video packets demuxed: frames of the source
    decoded: int = 0  # frames out of the decoder
    sampled: int = 0  # frames delivered
    skipped: int = 0  # frames of the source never decoded (keyframes only, lag, undecodable)
    decode_errors: int = 0
    lag_drops: int = 0  # times a live stream dropped frames to catch up
    keyframes_only: bool = False  # whether the decoder skips non-key frames now
    decode_fps: float = 0.0  # frames decoded per second of wall time
    source_fps: float = 0.0  # frames of the source (packets) per second of wall time
    lag: float = 0.0  # seconds behind the live source (live streams)
    _window: tuple[float, int, int] = field(default=(0.0, 0, 0), repr=False)

    def tick(self, now: float, final: bool = False) -> None:
        """Update the rates once a second over the last window (and over a shorter one at the end)."""
        start, decoded, packets = self._window
        if start == 0.0:
            self._window = (now, self.decoded, self.packets)
        elif now - start >= 1.0 or (final and self.decode_fps == 0.0 and now > start):
            self.decode_fps = (self.decoded - decoded) / (now - start)
            self.source_fps = (self.packets - packets) / (now - start)
            self._window = (now, self.decoded, self.packets)


# ---- references -------------------------------------------------------------------------------


def _local_path(reference: str) -> Path | None:
    """The local path a reference names, or None for a URL."""
    match = _SCHEME.match(reference)
    if match is None:
        return Path(reference)
    scheme = match.group(1).lower()
    if scheme == "file":
        parts = urlsplit(reference)
        if parts.netloc not in ("", "localhost"):
            return None
        return Path(unquote(parts.path))
    return None


def validate_reference(reference: str, kind: str, allowed_dirs: list[Path] | None) -> None:
    """Refuse at once what the source would fail on: a scheme it does not open, a missing file.

    Allowed: ``rtsp``, ``rtsps``, ``http``, ``https`` URLs with a host, and local files (a path
    or a ``file:`` URL). Every other scheme is refused: FFmpeg's other protocols (``concat:``,
    ``subfile:``, ``pipe:``, ``udp:``, ...) would read files or sockets the caller did not mean.
    With ``allowed_dirs`` a local file must lie, after resolving symbolic links and ``..``,
    inside one of them; a path outside is refused as ``unsupported_scheme`` (a reference the
    agent will not open) before looking whether it exists, so the answer tells nothing about
    files elsewhere. ``kind`` does not restrict the scheme: a file may be read as a stream
    (its end is then a failure) and a URL as a video file.
    """
    del kind  # both kinds take both URLs and files; the parameter is the caller's context
    if not reference or reference != reference.strip() or any(ord(c) < 32 for c in reference):
        raise SourceError("unsupported_scheme", "the reference is empty or has control characters")
    path = _local_path(reference)
    if path is None:
        scheme = reference.split(":", 1)[0].lower()
        if scheme not in NETWORK_SCHEMES:
            raise SourceError(
                "unsupported_scheme",
                f"scheme {scheme!r} is not supported (use {', '.join(NETWORK_SCHEMES)} or a file path)",
            )
        if not urlsplit(reference).hostname:
            raise SourceError("unsupported_scheme", f"{scheme} URL without a host")
        return
    resolved = path.resolve()
    if allowed_dirs is not None:
        roots = [Path(root).resolve() for root in allowed_dirs]
        if not any(resolved.is_relative_to(root) for root in roots):
            raise SourceError(
                "unsupported_scheme", f"{path} is outside the directories video files may be read from"
            )
    if not resolved.is_file():
        raise SourceError("not_found", f"no such video file: {path}")


def _redact(reference: str) -> str:
    """The reference without credentials (user, password, token query parameters), for messages
    and logs: the same masking as the API's answers (config.mask_url)."""
    return mask_url(reference)


# ---- classification ---------------------------------------------------------------------------


def _resolves(host: str, timeout: float) -> bool | None:
    """Whether ``host`` resolves (None: no answer in time). getaddrinfo has no timeout of its own."""
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=lookup, name=f"resolve:{host}", daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else None


def classify(
    exc: BaseException,
    *,
    elapsed: float | None = None,
    timeout: float | None = None,
    reference: str | None = None,
) -> SourceError:
    """The SourceError for an exception of PyAV, FFmpeg or the OS.

    ``elapsed`` and ``timeout`` say how long the failed call ran and how long it was allowed:
    an error after the whole timeout is a timeout whatever FFmpeg calls it (an RTSP server
    that accepts the connection and never answers surfaces as "Invalid data").
    """
    if isinstance(exc, SourceError):
        return exc
    where = f" ({_redact(reference)})" if reference else ""
    text = f"{type(exc).__name__}: {exc}"
    if reference:
        # FFmpeg's messages quote the URL they failed on, credentials and all.
        text = text.replace(reference, _redact(reference))
    if isinstance(exc, av.error.ExitError) or (
        elapsed is not None and timeout is not None and elapsed >= 0.9 * timeout
    ):
        waited = elapsed if elapsed is not None else timeout
        return SourceError("timeout", f"no data for {waited:.1f} s{where}" if waited else f"timed out{where}")
    if isinstance(exc, TimeoutError):
        return SourceError("timeout", f"timed out{where}: {text}")
    if isinstance(exc, ConnectionRefusedError):
        return SourceError("connection_refused", f"connection refused{where}")
    if isinstance(exc, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError | PermissionError):
        return SourceError("connection_refused", f"access refused{where}: {text}")
    if isinstance(
        exc, av.error.HTTPNotFoundError | FileNotFoundError | IsADirectoryError | NotADirectoryError
    ):
        return SourceError("not_found", f"not found{where}: {text}")
    if isinstance(
        exc, av.error.DecoderNotFoundError | av.error.DemuxerNotFoundError | av.error.PatchWelcomeError
    ):
        return SourceError("unsupported_codec", f"unsupported format or codec{where}: {text}")
    if isinstance(exc, av.error.ProtocolNotFoundError):
        return SourceError("unsupported_scheme", f"unsupported protocol{where}: {text}")
    if isinstance(exc, av.error.InvalidDataError):
        return SourceError("corrupt_data", f"corrupt data{where}: {text}")
    if isinstance(exc, av.error.EOFError | EOFError):
        return SourceError("end_of_stream", f"end of stream{where}")
    if isinstance(exc, OSError) and exc.errno == errno.EIO and reference:
        # FFmpeg reports a host it cannot resolve as a plain I/O error; tell the two apart.
        host = urlsplit(reference).hostname
        if host and _resolves(host, timeout or 5.0) is False:
            return SourceError("not_found", f"cannot resolve host {host!r}{where}")
    return SourceError("io_error", f"I/O error{where}: {text}")


# ---- geometry ---------------------------------------------------------------------------------

Rect = tuple[int, int, int, int]  # x, y, width, height


def rotated_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    return (height, width) if rotation in (90, 270) else (width, height)


def rect_to_source(rect: Rect, rotation: int, width: int, height: int) -> Rect:
    """A rectangle of the rotated frame -> the same pixels in the source frame (width x height)."""
    x, y, w, h = rect
    if rotation == 90:
        return y, height - x - w, h, w
    if rotation == 180:
        return width - x - w, height - y - h, w, h
    if rotation == 270:
        return width - y - h, x, h, w
    return rect


def rect_to_rotated(rect: Rect, rotation: int, width: int, height: int) -> Rect:
    """The inverse of :func:`rect_to_source`."""
    x, y, w, h = rect
    if rotation == 90:
        return height - y - h, x, h, w
    if rotation == 180:
        return width - x - w, height - y - h, w, h
    if rotation == 270:
        return y, width - x - w, h, w
    return rect


def roi_rect(spec: SourceSpec, width: int, height: int) -> Rect | None:
    """The ROI in pixels of the rotated frame (width x height), clamped to it.

    The whole frame when there is no ROI; None when no pixel of the ROI lies in the frame.
    """
    if spec.roi is None:
        return 0, 0, width, height
    x, y, w, h = spec.roi
    if spec.roi_mode == "percent":
        x, w = x * width / 100.0, w * width / 100.0
        y, h = y * height / 100.0, h * height / 100.0
    x0, y0 = max(0, min(width, round(x))), max(0, min(height, round(y)))
    x1, y1 = max(x0, min(width, round(x + w))), max(y0, min(height, round(y + h)))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return x0, y0, x1 - x0, y1 - y0


class _Transform:
    """Rotation, ROI and the one RGB conversion of a sampled frame.

    Without rotation: swscale converts the whole frame (the one copy) and the ROI is a view.
    With rotation: an FFmpeg filter graph crops the ROI (pointer arithmetic, on a rectangle
    widened to even coordinates so that 4:2:0 chroma stays aligned) and rotates it (transpose,
    or vflip+hflip for 180; a copy of the YUV pixels of the ROI only), then swscale converts the
    result; a view trims the widening. The graph is rebuilt when the frame's size changes.
    """

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self._graph: Any = None
        self._key: tuple[Any, ...] | None = None
        self._trim: Rect = (0, 0, 0, 0)
        self.roi_missed = False  # the ROI lay outside a frame, which was delivered whole

    def __call__(self, frame: Any) -> tuple[np.ndarray[Any, Any], tuple[int, int], tuple[int, int]]:
        rotation = self.spec.rotation % 360
        width, height = int(frame.width), int(frame.height)
        size = rotated_size(width, height, rotation)
        rect = roi_rect(self.spec, *size)
        if rect is None:
            self.roi_missed, rect = True, (0, 0, *size)
        x, y, w, h = rect
        if rotation == 0:
            image = frame.to_ndarray(format="rgb24")
            if (w, h) != size:
                image = image[y : y + h, x : x + w]
            return image, (x, y), size
        key = (width, height, frame.format.name, rotation, x, y, w, h)
        if key != self._key:
            self._build(key, frame.time_base)
        self._graph.push(frame)
        image = self._graph.pull().to_ndarray(format="rgb24")
        tx, ty, tw, th = self._trim
        if (tw, th) != (image.shape[1], image.shape[0]):
            image = image[ty : ty + th, tx : tx + tw]
        return image, (x, y), size

    def _build(self, key: tuple[Any, ...], time_base: Fraction | None) -> None:
        width, height, pix_fmt, rotation, x, y, w, h = key
        sx, sy, sw, sh = rect_to_source((x, y, w, h), rotation, width, height)
        # Widen to even coordinates, then find where the widened rectangle lands after rotation.
        ex0, ey0 = sx & ~1, sy & ~1
        ex1, ey1 = min(width, (sx + sw + 1) & ~1), min(height, (sy + sh + 1) & ~1)
        wide = (ex0, ey0, ex1 - ex0, ey1 - ey0)
        rx, ry, _, _ = rect_to_rotated(wide, rotation, width, height)
        self._trim = (x - rx, y - ry, w, h)
        graph = av.filter.Graph()
        chain = [
            graph.add_buffer(
                width=width, height=height, format=pix_fmt, time_base=time_base or Fraction(1, 90000)
            )
        ]
        if wide != (0, 0, width, height):
            chain.append(graph.add("crop", f"w={wide[2]}:h={wide[3]}:x={wide[0]}:y={wide[1]}:exact=1"))
        if rotation == 90:
            chain.append(graph.add("transpose", "clock"))
        elif rotation == 270:
            chain.append(graph.add("transpose", "cclock"))
        else:  # 180; vflip only flips pointers, hflip copies
            chain += [graph.add("vflip"), graph.add("hflip")]
        chain.append(graph.add("buffersink"))
        for upstream, downstream in itertools.pairwise(chain):
            upstream.link_to(downstream)
        graph.configure()
        self._graph, self._key = graph, key


# ---- numbering, timing, sampling --------------------------------------------------------------


class _Numbering:
    """Display-order frame numbers from packets, so that frames never decoded still count.

    Every packet is one frame of the source. A decoded frame with pts P is preceded, in display
    order, by every packet with a smaller pts: those not yet matched to a decoded frame were
    skipped (keyframes only, lag) or undecodable. Exact for closed GOPs (x264's default and
    most cameras); with open GOPs a keyframe decoded alone may be numbered a few frames early.
    """

    _MAX_PENDING = 4096

    def __init__(self) -> None:
        self._pending: list[int] = []
        self._without_pts = 0
        self._next = 0
        self._last_pts: int | None = None

    def packet(self, pts: int | None) -> None:
        if pts is None:
            self._without_pts += 1
        elif len(self._pending) < self._MAX_PENDING:
            heapq.heappush(self._pending, pts)

    def unmatched(self) -> int:
        """Packets never matched to a decoded frame (at the end: frames never decoded)."""
        return len(self._pending) + self._without_pts

    def frame(self, pts: int | None) -> tuple[int, int]:
        """(number of this frame, frames skipped before it)."""
        skipped = 0
        if pts is None:
            if self._without_pts:
                self._without_pts -= 1
            elif self._pending:
                heapq.heappop(self._pending)
        else:
            if self._last_pts is not None and pts < self._last_pts:
                self._pending.clear()  # timestamps went back (a new timeline): forget the old one
            skipped, self._without_pts = self._without_pts, 0
            while self._pending and self._pending[0] < pts:
                heapq.heappop(self._pending)
                skipped += 1
            if self._pending and self._pending[0] == pts:
                heapq.heappop(self._pending)
            self._last_pts = pts
        number = self._next + skipped
        self._next = number + 1
        return number, skipped


class _Clock:
    """Seconds into the stream from pts; re-anchored when timestamps go back.

    A frame without pts (the first RTSP frame may have none) gets the wall-clock time since the
    first frame on a live stream, never less than the previous offset plus one frame duration,
    so offsets always increase.
    """

    def __init__(self, time_base: Fraction, frame_duration: float, live: bool) -> None:
        self.time_base = time_base
        self.frame_duration = frame_duration
        self.live = live
        self._origin: tuple[int, float] | None = None  # (pts, offset at that pts)
        self._previous: float | None = None
        self._first_wall: float | None = None

    def offset(self, pts: int | None, now: float) -> float:
        if self._first_wall is None:
            self._first_wall = now
        estimate = 0.0 if self._previous is None else self._previous + self.frame_duration
        if pts is None:
            value = max(estimate, now - self._first_wall) if self.live else estimate
        else:
            if self._origin is not None:
                value = self._origin[1] + float((pts - self._origin[0]) * self.time_base)
                if self._previous is not None and value < self._previous - 1e-3:
                    self._origin = None  # timestamps went back: start a new timeline here
            if self._origin is None:
                self._origin = (pts, estimate)
            value = self._origin[1] + float((pts - self._origin[0]) * self.time_base)
        self._previous = value
        return value


class _Sampler:
    """Which frames to deliver: every Nth frame (unit frame), or N frames per second (unit second).

    Per second, a frame is taken when its offset reaches the next point of a grid with step
    1/N seconds, and the next point is the first one after it: about N per second, without
    bursts after a gap.
    """

    def __init__(self, period: float, unit: str) -> None:
        self.unit = unit
        self.every = max(1, round(period)) if unit == "frame" else 1
        self.interval = 1.0 / period if unit == "second" and period > 0 else 0.0
        self._due: float | None = None

    def take(self, number: int, offset: float) -> bool:
        if self.unit == "frame":
            return number % self.every == 0
        if self._due is not None and offset < self._due - _EPS:
            return False
        if self.interval > 0:
            self._due = (math.floor(offset / self.interval + _EPS) + 1) * self.interval
        return True


class _LagMeter:
    """How far a live reader is behind its source, in seconds.

    Wall time minus media time is smallest when the reader is at the live edge; the lag is how
    far above that minimum it is now. The minimum leaks upwards by ``DRIFT`` seconds per second,
    so that a source clock running slower than ours (tens of ppm) is not taken for lag, while a
    reader falling behind faster than that is caught. Media time jumping back, or forward by
    much more than the wall time that passed, is a new timeline: the minimum starts again.
    """

    DRIFT = 1e-3
    JUMP = 10.0

    def __init__(self, time_base: Fraction) -> None:
        self.time_base = time_base
        self._floor: float | None = None
        self._last: tuple[float, float] | None = None  # (media, wall) of the previous packet

    def update(self, stamp: int, now: float) -> float:
        media = float(stamp * self.time_base)
        behind = now - media
        if self._floor is None or self._last is None:
            self._floor = behind
        else:
            last_media, last_now = self._last
            step = media - last_media
            if step < -1.0 or step > (now - last_now) + self.JUMP:
                self._floor = behind
            else:
                self._floor = min(behind, self._floor + self.DRIFT * (now - last_now))
        self._last = (media, now)
        return behind - self._floor


# ---- the source -------------------------------------------------------------------------------


class VideoSource:
    """One stream's source. ``open()``, then iterate ``frames()``, then ``close()``; all blocking.

    ``frames()`` runs in one thread. ``stop()`` and ``close()`` may be called from any other:
    the generator returns before its next packet, and the container is closed by whichever
    thread finishes last, never under a running read.
    """

    def __init__(self, spec: SourceSpec, stream_id: str) -> None:
        self.spec = spec
        self.stream_id = stream_id
        self.stats = SourceStats()
        self.live = spec.kind == "stream"
        self._container: Any = None
        self._stream: Any = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running = False
        self._close_pending = False
        self._roi_warned = False

    # -- lifecycle --

    @property
    def network(self) -> bool:
        return _local_path(self.spec.reference) is None

    def _url_and_options(self) -> tuple[str, dict[str, str]]:
        reference = self.spec.reference
        path = _local_path(reference)
        if path is not None:
            # "file:" pins FFmpeg's file protocol: a path like "concat:a|b" stays a file name.
            return f"file:{path.resolve()}", {}
        read_us = str(int(self.spec.read_timeout * 1_000_000))
        # FFmpeg's probe otherwise reads about 20 frames to estimate the frame rate (0.9 s of an
        # RTSP camera) before the first one is decoded. The codec parameters come from the SDP
        # or the first keyframe; a frame rate that a short probe misses only matters where
        # timestamps are missing, since frames are timed by their own.
        probe: dict[str, str] = {}
        if self.spec.probe_duration > 0:
            probe["analyzeduration"] = str(int(self.spec.probe_duration * 1_000_000))
        scheme = reference.split(":", 1)[0].lower()
        if scheme in ("rtsp", "rtsps"):
            # TCP: no packet loss and no UDP ports to open; video only: no audio to set up.
            return reference, {
                "rtsp_transport": "tcp",
                "timeout": read_us,
                "allowed_media_types": "video",
                **probe,
            }
        # http(s), HLS included: rw_timeout is the one the HLS demuxer passes on to segments.
        return reference, {"timeout": read_us, "rw_timeout": read_us, **probe}

    def open(self) -> None:
        """Open the source and find its video stream; raises SourceError."""
        validate_reference(self.spec.reference, self.spec.kind, None)
        url, options = self._url_and_options()
        started = time.monotonic()
        try:
            container = av.open(
                url, options=options, timeout=(self.spec.open_timeout, self.spec.read_timeout)
            )
        except Exception as exc:
            elapsed = time.monotonic() - started
            limit = min(self.spec.open_timeout, self.spec.read_timeout) if self.network else None
            raise classify(exc, elapsed=elapsed, timeout=limit, reference=self.spec.reference) from exc
        try:
            if not container.streams.video:
                raise SourceError("unsupported_codec", f"no video stream in {_redact(self.spec.reference)}")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise SourceError(
                    "unsupported_codec", f"no decoder for the video of {_redact(self.spec.reference)}"
                )
        except BaseException:
            container.close()
            raise
        self._container, self._stream = container, stream
        self._stop.clear()
        log.info(
            "opened %s: %s %dx%d, %s fps, in %.2f s",
            _redact(self.spec.reference),
            stream.codec_context.name,
            stream.codec_context.width,
            stream.codec_context.height,
            stream.average_rate or stream.guessed_rate,
            time.monotonic() - started,
        )

    def stop(self) -> None:
        """Ask ``frames()`` to return before its next packet (thread-safe)."""
        self._stop.set()

    def close(self) -> None:
        """Release the source (thread-safe; idempotent).

        While a ``frames()`` generator is running or suspended, the release is left to it: it
        returns at its next packet (or when it is garbage-collected) and closes the container.
        """
        self._stop.set()
        with self._lock:
            if self._running:
                self._close_pending = True  # the reading thread closes when it leaves frames()
                return
            container, self._container, self._stream = self._container, None, None
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()

    def __enter__(self) -> VideoSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- decoding --

    def frames(self) -> Iterator[Frame]:
        """Decode, sample and deliver frames until the end of a file or a failure (SourceError)."""
        with self._lock:
            if self._container is None:
                raise RuntimeError("open() the source first")
            self._running = True
        try:
            yield from self._frames(self._container, self._stream)
        except BaseException as exc:
            # The error's traceback holds _frames' finished frame, and so the decoder: FFmpeg's
            # threads and frame buffers stay alive for as long as anyone holds the error, which a
            # reference cycle (the stream worker's frame holds the error it raised) stretches to
            # the next full garbage collection. Found by the reliability suite: every stream that
            # failed mid-stream left 2-4 decoder threads behind. Clearing the frame frees them now.
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            with self._lock:
                self._running = False
                pending = self._close_pending
            if pending:
                self.close()

    def _frames(self, container: Any, stream: Any) -> Iterator[Frame]:
        spec, stats = self.spec, self.stats
        codec = stream.codec_context
        time_base = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate
        frame_duration = 1.0 / float(rate) if rate else 0.04
        numbering, clock = _Numbering(), _Clock(time_base, frame_duration, self.live)
        sampler, transform = _Sampler(spec.rate_period, spec.rate_unit), _Transform(spec)
        # (index of the packet, its time) of the last keyframe packets: the GOP as it really is.
        keyframes: deque[tuple[int, float]] = deque(maxlen=_KEYFRAMES_TO_TRUST)
        catching_up = False
        lag_meter = _LagMeter(time_base)
        lag_guard = self.live and self.network and "hls" not in (container.format.name or "")
        consecutive_errors = 0
        lag = 0.0
        packets = container.demux(stream)

        while not self._stop.is_set():
            started = time.monotonic()
            try:
                packet = next(packets)
            except StopIteration:
                break
            except Exception as exc:
                raise self._read_error(exc, time.monotonic() - started) from exc
            now = time.monotonic()
            waited = now - started
            if waited >= spec.read_timeout and self.network:
                # The packet the RTSP demuxer held back when the interrupt fired: the source froze.
                raise SourceError("timeout", f"no data for {waited:.1f} s from {_redact(spec.reference)}")

            if packet.size:  # the empty packet at the end only flushes the decoder
                stats.packets += 1
                numbering.packet(packet.pts)
                if lag_guard:
                    stamp = packet.dts if packet.dts is not None else packet.pts
                    if stamp is not None:
                        lag = stats.lag = lag_meter.update(stamp, now)
                    if lag > spec.max_lag and not catching_up:
                        catching_up = True
                        stats.lag_drops += 1
                        codec.skip_frame = "NONKEY"
                        log.warning(
                            "%s: %.1f s behind the source; dropping to the next keyframe", self.stream_id, lag
                        )
                if packet.is_keyframe:
                    if packet.pts is None:
                        keyframes.clear()
                    else:
                        # In a closed GOP the packets before a keyframe are the frames shown before it.
                        keyframes.append((stats.packets - 1, float(packet.pts * time_base)))
                    if catching_up and lag <= spec.max_lag / 2:
                        catching_up = False
                    # Switch only at a keyframe, so that every frame decoded has its references.
                    wanted = spec.keyframe_skip and self._keyframes_suffice(
                        keyframes, sampler, frame_duration
                    )
                    keyframes_only = catching_up or wanted
                    codec.skip_frame = "NONKEY" if keyframes_only else "DEFAULT"
                    stats.keyframes_only = keyframes_only and not catching_up

            try:
                decoded = codec.decode(packet)
                consecutive_errors = 0
            except av.error.DecoderNotFoundError as exc:
                raise classify(exc, reference=spec.reference) from exc
            except (av.error.InvalidDataError, av.error.PatchWelcomeError, av.error.UndefinedError) as exc:
                stats.decode_errors += 1
                consecutive_errors += 1
                if consecutive_errors >= MAX_CONSECUTIVE_DECODE_ERRORS:
                    raise SourceError(
                        "corrupt_data", f"{consecutive_errors} undecodable packets in a row: {exc}"
                    ) from exc
                continue

            for frame in decoded:
                now = time.monotonic()
                number, skipped = numbering.frame(frame.pts)
                offset = clock.offset(frame.pts, now)
                stats.decoded += 1
                stats.skipped += skipped
                if not sampler.take(number, offset):
                    continue
                image, roi_offset, size = transform(frame)
                if transform.roi_missed and not self._roi_warned:
                    self._roi_warned = True
                    log.warning(
                        "%s: the ROI %s is outside the %dx%d frame; delivering whole frames",
                        self.stream_id,
                        spec.roi,
                        *size,
                    )
                stats.sampled += 1
                stats.tick(now)
                yield Frame(
                    stream_id=self.stream_id,
                    image=image,
                    frame_number=number,
                    time_offset=offset,
                    decoded_at=time.monotonic(),
                    source_size=size,
                    offset=roi_offset,
                )
            stats.tick(now)

        stats.skipped += numbering.unmatched()
        stats.tick(time.monotonic(), final=True)
        if self._stop.is_set():
            return
        if stats.decoded == 0 and stats.decode_errors:
            raise SourceError("corrupt_data", f"no frame could be decoded ({stats.decode_errors} errors)")
        if self.live:
            raise SourceError("end_of_stream", f"the stream ended: {_redact(spec.reference)}")

    def _read_error(self, exc: BaseException, elapsed: float) -> SourceError:
        error = classify(
            exc,
            elapsed=elapsed,
            timeout=self.spec.read_timeout if self.network else None,
            reference=self.spec.reference,
        )
        if error.kind == "corrupt_data" and self.network:
            # A network stream that breaks off mid-packet is a lost stream, not a bad one.
            return SourceError("end_of_stream", f"the stream broke off: {error}")
        return error

    @staticmethod
    def _keyframes_suffice(
        keyframes: deque[tuple[int, float]], sampler: _Sampler, frame_duration: float
    ) -> bool:
        """Whether every frame the sampler wants is a keyframe (or as good as one), as observed."""
        if len(keyframes) < _KEYFRAMES_TO_TRUST:
            return False
        items = list(keyframes)
        if sampler.unit == "frame":
            gaps = {b[0] - a[0] for a, b in itertools.pairwise(items)}
            if len(gaps) != 1:
                return False
            gop = gaps.pop()
            # Every multiple of N is a keyframe when keyframes sit on multiples of the GOP and N is one.
            return gop > 0 and sampler.every % gop == 0 and items[-1][0] % gop == 0 and sampler.every > 1
        longest = max(b[1] - a[1] for a, b in itertools.pairwise(items))
        return sampler.interval > 0 and longest <= sampler.interval + frame_duration / 2
