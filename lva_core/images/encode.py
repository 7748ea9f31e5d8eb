"""Encoding one picture by an :class:`ImagePolicy`, with Pillow. Pure: no I/O, no shared state,
safe from any thread (Pillow releases the GIL while it resizes and encodes)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lva_core.images.policy import ImagePolicy


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    mimetype: str
    width: int
    height: int


def scaled_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """(width, height) with the longest side at most ``max_size``, aspect kept, never upscaled."""
    longest = max(width, height)
    if longest <= max_size:
        return width, height
    scale = max_size / longest
    if width >= height:
        return max_size, max(1, round(height * scale))
    return max(1, round(width * scale)), max_size


def jpeg_quality(quality: float) -> int:
    """LUNA's 0..1 as libjpeg's 1..100 (0.9 -> 90)."""
    return max(1, min(100, round(quality * 100)))


def encode(pixels: np.ndarray[Any, Any], policy: ImagePolicy) -> EncodedImage:
    """``pixels`` (uint8 RGB ``[H, W, 3]``) encoded as the policy says.

    Raises ValueError for anything but a non-empty uint8 ``[H, W, 3]`` array.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
        raise ValueError(f"an image is uint8 [H, W, 3], not {pixels.dtype} {list(pixels.shape)}")
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    # A cropped frame is a strided view: Pillow needs rows in one block (a copy only then).
    image = Image.fromarray(np.ascontiguousarray(pixels))
    size = scaled_size(width, height, policy.max_size)
    if size != (width, height):
        # reduce() by the whole factor first (a box average: antialiased, about 1 ms for 720p),
        # then bilinear for the rest: a quarter of the time of bilinear alone (measured 2.3 vs
        # 7.9 ms from 1280x720 to 640x360), and no aliasing either way.
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0)
    out = io.BytesIO()
    if policy.mimetype == "image/png":
        # Lossless whatever the level; 1 is several times faster than zlib's default for a
        # few percent more bytes.
        image.save(out, "PNG", compress_level=1)
    else:
        image.save(out, "JPEG", quality=jpeg_quality(policy.quality))
    return EncodedImage(out.getvalue(), policy.mimetype, size[0], size[1])
