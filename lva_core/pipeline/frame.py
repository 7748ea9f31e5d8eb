"""A decoded, sampled frame on its way to the analytics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One frame as the analytics see it.

    ``image`` is uint8 RGB ``[H, W, 3]`` after rotation and ROI cropping: the only pixels the
    models get. ``offset`` is where the ROI's top-left corner lies in the rotated source frame,
    so that ``x + offset[0]`` turns ROI pixels into source-frame pixels.
    """

    stream_id: str
    image: np.ndarray[Any, Any]
    frame_number: int  # index of the frame in the source, from 0
    time_offset: float  # seconds into the stream (pts-based; wall-clock based when pts is missing)
    decoded_at: float  # time.monotonic() when it was decoded: frame age = now - decoded_at
    source_size: tuple[int, int]  # (width, height) of the rotated source frame
    offset: tuple[int, int] = (0, 0)  # (x, y) of the ROI in the rotated source frame

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[0])
