"""What to open and which frames to deliver (``SourceSpec``), and the counters of an open source."""

from __future__ import annotations

from dataclasses import dataclass, field

from lva_common.config import DEFAULTS
from lva_core.pipeline.source.hwaccel import HWACCEL_MODES
from lva_core.streams.rate import RateMeter

_STREAMS = DEFAULTS["streams"]

SOURCE_KINDS = ("stream", "videofile")
ROI_MODES = ("abs", "percent")
RATE_UNITS = ("frame", "second")


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
    open_timeout: float = _STREAMS["open_timeout"]
    read_timeout: float = _STREAMS["read_timeout"]
    # Network sources: seconds FFmpeg reads to learn the format (analyzeduration); 0: FFmpeg's.
    probe_duration: float = _STREAMS["probe_duration"]
    # Decode keyframes only when the sampling period allows it (off: always decode everything).
    keyframe_skip: bool = True
    # Live streams only: drop non-key frames before decoding when this far behind the source.
    max_lag: float = 2.0
    # decoder.hwaccel (hwaccel.py): auto, cuda or none; none here, the core passes its setting.
    hwaccel: str = "none"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("kind", self.kind, SOURCE_KINDS),
            ("roi_mode", self.roi_mode, ROI_MODES),
            ("rate_unit", self.rate_unit, RATE_UNITS),
            ("hwaccel", self.hwaccel, HWACCEL_MODES),
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
    # Frames decoded over the last second, readable from any thread: 0 a second after they stop.
    rate: RateMeter = field(default_factory=RateMeter, repr=False, compare=False)

    def tick(self, now: float, final: bool = False) -> None:
        """Update the rates once a second over the last window (and over a shorter one at the end)."""
        self.rate.mark(now, self.decoded)
        start, decoded, packets = self._window
        if start == 0.0:
            self._window = (now, self.decoded, self.packets)
        elif now - start >= 1.0 or (final and self.decode_fps == 0.0 and now > start):
            self.decode_fps = (self.decoded - decoded) / (now - start)
            self.source_fps = (self.packets - packets) / (now - start)
            self._window = (now, self.decoded, self.packets)
