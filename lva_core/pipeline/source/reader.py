"""``VideoSource``: open a reference with PyAV; demux, decode, sample and convert in one thread.

The stream worker drives a :class:`VideoSource` from a thread of its own: ``open()``, then
``frames()`` until it returns (a video file ended) or raises :class:`SourceError` (the source
failed: the worker restarts it with backoff or gives up). Retrying is not done here. The
decisions behind the loop are in the package's docstring.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Generator, Iterator
from fractions import Fraction
from typing import Any

import av
import av.error

from lva_common.config import mask_url
from lva_core.pipeline.frame import Frame
from lva_core.pipeline.pixels import FormatLearner
from lva_core.pipeline.source.errors import SourceError, classify
from lva_core.pipeline.source.hwaccel import accelerator
from lva_core.pipeline.source.reference import local_path, validate_reference
from lva_core.pipeline.source.spec import SourceSpec, SourceStats
from lva_core.pipeline.source.timing import LagMeter, Numbering, Sampler, StreamClock
from lva_core.pipeline.source.transform import FrameTransform

log = logging.getLogger("lva_core.pipeline.source")

MAX_CONSECUTIVE_DECODE_ERRORS = 25
# Keyframes observed before trusting the interval between them (two intervals).
_KEYFRAMES_TO_TRUST = 3


class VideoSource:
    """One stream's source. ``open()``, then iterate ``frames()``, then ``close()``; all blocking.

    ``frames()`` runs in one thread. ``stop()`` and ``close()`` may be called from any other:
    the generator returns before its next packet, and the container is closed by whichever
    thread finishes last, never under a running read.
    """

    def __init__(self, spec: SourceSpec, stream_id: str, learner: FormatLearner | None = None) -> None:
        self.spec = spec
        self.stream_id = stream_id
        # The formats the stream's models asked for: made here, in the decoding thread.
        self.learner = learner
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
        return local_path(self.spec.reference) is None

    def _url_and_options(self) -> tuple[str, dict[str, str]]:
        reference = self.spec.reference
        path = local_path(reference)
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
        try:
            accel = accelerator(self.spec.hwaccel, self.stream_id)
        except LookupError as exc:
            raise SourceError(
                "unsupported_codec", f"hardware decoding (decoder.hwaccel: cuda) is unavailable here: {exc}"
            ) from None
        started = time.monotonic()
        try:
            container = av.open(
                url,
                options=options,
                timeout=(self.spec.open_timeout, self.spec.read_timeout),
                hwaccel=accel,
            )
        except Exception as exc:
            elapsed = time.monotonic() - started
            limit = min(self.spec.open_timeout, self.spec.read_timeout) if self.network else None
            raise classify(exc, elapsed=elapsed, timeout=limit, reference=self.spec.reference) from exc
        try:
            if not container.streams.video:
                raise SourceError("unsupported_codec", f"no video stream in {mask_url(self.spec.reference)}")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise SourceError(
                    "unsupported_codec", f"no decoder for the video of {mask_url(self.spec.reference)}"
                )
        except BaseException:
            container.close()
            raise
        self._container, self._stream = container, stream
        self._stop.clear()
        log.info(
            "opened %s: %s %dx%d, %s fps, in %.2f s",
            mask_url(self.spec.reference),
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

    def frames(self) -> Generator[Frame, None, None]:
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
        numbering, clock = Numbering(), StreamClock(time_base, frame_duration, self.live)
        sampler, transform = Sampler(spec.rate_period, spec.rate_unit), FrameTransform(spec, self.learner)
        # (index of the packet, its time) of the last keyframe packets: the GOP as it really is.
        keyframes: deque[tuple[int, float]] = deque(maxlen=_KEYFRAMES_TO_TRUST)
        catching_up = False
        lag_meter = LagMeter(time_base)
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
                raise SourceError("timeout", f"no data for {waited:.1f} s from {mask_url(spec.reference)}")

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
                pixels, roi_offset, size = transform(frame)
                if self.learner is not None:
                    pixels.prepare(self.learner.next_frame())
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
                    pixels=pixels,
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
            raise SourceError("end_of_stream", f"the stream ended: {mask_url(spec.reference)}")

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
        keyframes: deque[tuple[int, float]], sampler: Sampler, frame_duration: float
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
