"""A decoded, sampled frame on its way to the analytics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lva_core.pipeline.pixels import Pixels


@dataclass(frozen=True)
class Frame:
    """One frame as the analytics see it.

    ``pixels`` is the picture after rotation and ROI cropping: the only pixels the models get,
    in whichever format each model declares (pass ``frame.pixels`` as a model's ``IMAGE``).
    ``image`` is that picture as uint8 RGB ``[H, W, 3]``, made on first use. A frame may be
    built from an RGB array too (``Frame(stream, array, ...)``: tests, plugins). ``offset`` is
    where the ROI's top-left corner lies in the rotated source frame, so that ``x + offset[0]``
    turns ROI pixels into source-frame pixels.
    """

    stream_id: str
    pixels: Pixels
    frame_number: int  # index of the frame in the source, from 0
    time_offset: float  # seconds into the stream (pts-based; wall-clock based when pts is missing)
    decoded_at: float  # time.monotonic() when it was decoded: frame age = now - decoded_at
    source_size: tuple[int, int]  # (width, height) of the rotated source frame
    offset: tuple[int, int] = (0, 0)  # (x, y) of the ROI in the rotated source frame

    def __post_init__(self) -> None:
        if not isinstance(self.pixels, Pixels):
            object.__setattr__(self, "pixels", Pixels.of_rgb(self.pixels))

    @property
    def image(self) -> np.ndarray[Any, Any]:
        return self.pixels.rgb()

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.size
