"""Pure helpers of the read loop: frame numbers from packets, stream clocks, sampling, lag.

No I/O: each is fed packet or frame timestamps and the time, and answers.
"""

from __future__ import annotations

import heapq
import math
from fractions import Fraction

_EPS = 1e-6


class Numbering:
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


class StreamClock:
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


class Sampler:
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


class LagMeter:
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
