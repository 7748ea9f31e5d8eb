"""``image_retain_policy``: how an event's image is encoded and how long it is kept (LUNA's)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MIMETYPES = ("image/jpeg", "image/png")
# A year: an image kept longer than that is an archive, not an event's picture.
MAX_TTL = 365 * 24 * 3600.0
MAX_SIDE = 4096  # 4K: the largest camera picture an event keeps


@dataclass(frozen=True)
class ImagePolicy:
    """A validated ``image_retain_policy``.

    ``quality`` is 0..1 (JPEG only: PNG is lossless); ``max_size`` the longest side in pixels
    (larger pictures are downscaled keeping their aspect, smaller ones never upscaled); ``ttl``
    the seconds the image is served for.
    """

    mimetype: str = "image/jpeg"
    quality: float = 0.9
    max_size: int = 1280
    ttl: float = 3600.0

    def __post_init__(self) -> None:
        if self.mimetype not in MIMETYPES:
            raise ValueError(f"mimetype {self.mimetype!r} is not one of {', '.join(MIMETYPES)}")
        if not 0.0 <= self.quality <= 1.0:
            raise ValueError(f"quality {self.quality} is not within 0..1")
        if not 1 <= self.max_size <= MAX_SIDE:
            raise ValueError(f"max_size {self.max_size} is not within 1..{MAX_SIDE}")
        if not (math.isfinite(self.ttl) and 0.0 < self.ttl <= MAX_TTL):
            raise ValueError(f"ttl {self.ttl} is not within (0, {MAX_TTL:g}] seconds")

    @property
    def extension(self) -> str:
        return "png" if self.mimetype == "image/png" else "jpg"

    @classmethod
    def from_parameters(cls, mapping: Mapping[str, Any] | None) -> ImagePolicy:
        """The policy of an ``image_retain_policy`` parameter (validated by the analytic's schema;
        numbers may arrive as floats through protobuf's Struct). None or missing keys: defaults."""
        if not mapping:
            return cls()
        defaults = cls()
        max_size = float(mapping.get("max_size", defaults.max_size))
        if not max_size.is_integer():
            raise ValueError(f"max_size {max_size} is not a whole number of pixels")
        return cls(
            mimetype=str(mapping.get("mimetype", defaults.mimetype)),
            quality=float(mapping.get("quality", defaults.quality)),
            max_size=int(max_size),
            ttl=float(mapping.get("ttl", defaults.ttl)),
        )


_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "How the event's image is encoded and how long it is kept (LUNA's image_retain_policy). "
        "The image is stored in the core's image store and the event carries its URL, "
        "/1/images/{image_id}, served until ttl seconds after the event."
    ),
    "default": {"mimetype": "image/jpeg", "quality": 0.9, "max_size": 1280, "ttl": 3600},
    "additionalProperties": False,
    "properties": {
        "mimetype": {
            "enum": list(MIMETYPES),
            "default": "image/jpeg",
            "description": "The image's format: image/jpeg (small, lossy) or image/png (lossless, larger).",
        },
        "quality": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0.9,
            "description": (
                "JPEG quality from 0 (smallest) to 1 (best), 0.9 by default; ignored for PNG, "
                "which is lossless."
            ),
        },
        "max_size": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_SIDE,
            "default": 1280,
            "description": (
                "Longest side of the image in pixels: a larger picture is downscaled keeping its "
                "aspect ratio, a smaller one is never upscaled."
            ),
        },
        "ttl": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": MAX_TTL,
            "default": 3600,
            "description": (
                "Seconds the image is kept and served; afterwards its URL answers 404 and the "
                "file is removed."
            ),
        },
    },
}


def image_policy_schema() -> dict[str, Any]:
    """The ``image_retain_policy`` parameter's JSON schema (a draft 2020-12 fragment, with
    defaults), for an analytic's parameter schema. A copy: callers may change it."""
    return copy.deepcopy(_SCHEMA)
