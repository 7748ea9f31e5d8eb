"""A rate over the last second that can be read at any time, from any thread.

The decoding thread marks its running total; whoever reads (the API, ``/metrics``) gets the
frames of the last second. When frames stop (a frozen or killed camera, a paused stream) the
rate falls to 0 within a second instead of keeping its last value, so an alert on it fires.
"""

from __future__ import annotations

import threading
from collections import deque


class RateMeter:
    WINDOW = 1.0

    def __init__(self) -> None:
        self._marks: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def mark(self, now: float, total: int) -> None:
        """The running total at ``now`` (monotonic seconds)."""
        with self._lock:
            marks = self._marks
            marks.append((now, total))
            # Keep one mark at or before the window's start: the base the rate is counted from.
            while len(marks) > 2 and marks[1][0] <= now - self.WINDOW:
                marks.popleft()

    def rate(self, now: float) -> float:
        """Per second over the last ``WINDOW`` before ``now`` (over what there is, at the start)."""
        with self._lock:
            if len(self._marks) < 2:
                return 0.0  # one mark says no rate
            start = now - self.WINDOW
            base = self._marks[0]
            for mark in self._marks:
                if mark[0] > start:
                    break
                base = mark
            latest = self._marks[-1][1]
            latest_time = self._marks[-1][0]
        # The frames between the base and the latest mark came over that span (at least a window).
        span = max(latest_time - base[0], self.WINDOW) if base[0] <= start else now - base[0]
        return (latest - base[1]) / span if span > 0 else 0.0
