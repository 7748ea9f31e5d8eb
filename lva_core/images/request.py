"""An image an event asks for, and its resolution into a URL before the event is published.

An analytic does not encode: it puts an :class:`ImageRequest` (a reference to the pixels, no
copy, and the policy) where the URL belongs, for example
``event["overview"]["image"] = ImageRequest(frame.pixels, policy)``. Before the event leaves the
worker, :func:`resolve_images` stores every request of it and puts the URL in its place, or
:func:`strip_images` puts None there when the core keeps no images. Only events that carry a
request cost an encode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from lva_core.images.policy import ImagePolicy
from lva_core.images.store import ImageDropped, ImageStore
from lva_core.pipeline.pixels import Pixels

log = logging.getLogger("lva_core.images")

# One warning per kind of failure at most this often: a store that keeps failing (a full
# disk, a burst that overflows the queue) must not turn every event into a log line.
_LOG_EVERY = 60.0


@dataclass(frozen=True, eq=False, repr=False)
class ImageRequest:
    """The pixels (uint8 RGB ``[H, W, 3]``, or a frame's ``Pixels``, converted to RGB only on the
    image store's threads), kept by reference, and how to store them."""

    pixels: np.ndarray[Any, Any] | Pixels
    policy: ImagePolicy

    def __repr__(self) -> str:
        size = list(self.pixels.shape) if isinstance(self.pixels, np.ndarray) else list(self.pixels.size)
        return f"ImageRequest({size}, {self.policy})"


# Where a request sits: its container and the key or index in it.
_Slot = tuple[dict[Any, Any] | list[Any], Any]


def _slots(value: Any) -> list[tuple[_Slot, ImageRequest]]:
    found: list[tuple[_Slot, ImageRequest]] = []
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        items: Any
        if isinstance(node, dict):
            items = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        for key, item in items:
            if isinstance(item, ImageRequest):
                found.append(((node, key), item))
            elif isinstance(item, dict | list):
                stack.append(item)
    return found


def has_images(event: Any) -> bool:
    """Whether ``event`` holds an ImageRequest anywhere."""
    return bool(_slots(event))


def strip_images(event: Any) -> None:
    """Replace every ImageRequest in ``event`` by None (no image store is configured)."""
    for (container, key), _ in _slots(event):
        container[key] = None


class _Throttle:
    """When a kind of failure was last logged, and how many went unlogged since."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.quiet: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self.last.get(kind)
        if last is not None and now - last < _LOG_EVERY:
            self.quiet[kind] = self.quiet.get(kind, 0) + 1
            return
        self.last[kind] = now
        skipped = self.quiet.pop(kind, 0)
        suffix = f" ({skipped} more since the last warning)" if skipped else ""
        log.warning(message + suffix, *args)


_throttle = _Throttle()


async def resolve_images(event: dict[str, Any], store: ImageStore, account_id: str, stream_id: str) -> None:
    """Store every ImageRequest of ``event`` (nested dicts and lists) and replace it by its URL.

    The encodes run concurrently on the store's thread pool, never on the event loop. An image
    that cannot be stored (too many pending, an encoding or disk failure) becomes None: an
    event is never lost because of its image. The same request in two places is stored once.
    """
    slots = _slots(event)
    if not slots:
        return
    unique: dict[int, ImageRequest] = {}
    for _, request in slots:
        unique.setdefault(id(request), request)
    requests = list(unique.values())
    results = await asyncio.gather(
        *(store.put(account_id, stream_id, r.pixels, r.policy) for r in requests), return_exceptions=True
    )
    urls: dict[int, str | None] = {}
    for request, result in zip(requests, results, strict=True):
        if isinstance(result, asyncio.CancelledError):
            raise result
        if isinstance(result, ImageDropped):
            _throttle.warn("dropped", "stream %s: an event's image was dropped: %s", stream_id, result)
            urls[id(request)] = None
        elif isinstance(result, BaseException):
            _throttle.warn("failed", "stream %s: an event's image could not be stored: %r", stream_id, result)
            urls[id(request)] = None
        else:
            urls[id(request)] = result.url
    for (container, key), request in slots:
        container[key] = urls[id(request)]
