"""Where event images are kept until their ttl: an interface, and a local directory behind it.

:class:`ImageStore` is what the rest of the core sees (the stream worker stores, the
``ImagesService`` reads), so that an object store (S3 and the like) can take the local
directory's place. :class:`LocalImageStore` keeps each image as two files in one directory:

- ``<image_id>.jpg`` or ``<image_id>.png``, the encoded image;
- ``<image_id>.json``, its sidecar: account, stream, media type, size, and when it expires
  (Unix time).

The image is written first and the sidecar last, each to a temporary name renamed into place,
so a sidecar always names a whole image; a reader trusts nothing but the sidecar. An image past
its expiry is never served, even before the cleanup (a background task every
``cleanup_interval`` seconds) removes its files. The directory is the truth, not the process:
the images of an earlier run are found and cleaned up at start, and cores that share the
directory (a fleet's shared volume) serve each other's images.

Encoding runs on a bounded thread pool, never on the event loop. At most
``max_pending_encodes`` images wait or run there at a time; one more is dropped at once
(:class:`ImageDropped`, counted in ``lva_images_dropped_total{reason="busy"}``), so a burst
of events holds a bounded number of frames in memory and never slows the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lva_common.config import section
from lva_common.ids import canonical_uuid
from lva_core.images.encode import EncodedImage, encode
from lva_core.images.policy import ImagePolicy
from lva_core.metrics.instruments import IMAGE_BYTES, IMAGE_ENCODE, IMAGES_DROPPED, IMAGES_STORED
from lva_core.pipeline.pixels import Pixels

log = logging.getLogger("lva_core.images")

_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png"}
# Files of an interrupted write (a temporary name, an image without its sidecar) this old are
# removed at start; younger ones may be another core's write in progress on a shared directory.
_ORPHAN_AGE = 300.0


class ImageStoreError(Exception):
    """The image store cannot be used (its directory cannot be created or written)."""


class ImageDropped(Exception):
    """The image was not stored because too many encodes are pending."""


@dataclass(frozen=True)
class StoredImage:
    image_id: str
    url: str
    width: int
    height: int
    mimetype: str


class ImageStore(Protocol):
    async def put(
        self, account_id: str, stream_id: str, pixels: np.ndarray[Any, Any] | Pixels, policy: ImagePolicy
    ) -> StoredImage:
        """Encode ``pixels`` (off the event loop) and keep them for ``policy.ttl`` seconds.

        Raises ImageDropped when the store is too busy, and any other exception when encoding
        or writing fails."""
        ...

    async def get(self, image_id: str, account_id: str = "") -> tuple[bytes, str] | None:
        """(data, mimetype) of a stored image; None when it is unknown, expired, or, with
        ``account_id``, of another account."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def image_url(base_url: str, image_id: str) -> str:
    return f"{base_url.rstrip('/')}/1/images/{image_id}"


class LocalImageStore:
    """Images as files in ``directory`` (see the module docstring)."""

    def __init__(
        self,
        directory: str | Path,
        base_url: str = "",
        cleanup_interval: float = 60.0,
        workers: int = 1,
        max_pending: int = 16,
    ) -> None:
        self.directory = Path(directory)
        self.base_url = base_url
        self.cleanup_interval = float(cleanup_interval)
        self.max_pending = int(max_pending)
        if self.cleanup_interval <= 0 or workers < 1 or self.max_pending < 1:
            raise ImageStoreError(
                "images: cleanup_interval must be > 0, workers and max_pending_encodes >= 1"
            )
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImageStoreError(f"images.path {str(self.directory)!r} cannot be created: {exc}") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ImageStoreError(f"images.path {str(self.directory)!r} is not writable")
        self._workers = int(workers)
        self._pool: ThreadPoolExecutor | None = None
        self._pending = 0
        # (expires_at, image_id, extension) of every image known to this process, soonest first.
        self._expiries: list[tuple[float, str, str]] = []
        self._cleanup: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ paths

    def _image_path(self, image_id: str, extension: str) -> Path:
        return self.directory / f"{image_id}.{extension}"

    def _sidecar_path(self, image_id: str) -> Path:
        return self.directory / f"{image_id}.json"

    @property
    def pending(self) -> int:
        """Images waiting for or being encoded now."""
        return self._pending

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="image-encode")
        # What an earlier run left: indexed for the cleanup, expired ones removed now.
        found = await asyncio.to_thread(self._scan)
        for entry in found:
            heapq.heappush(self._expiries, entry)
        await self.cleanup()
        if self._cleanup is None:
            self._cleanup = asyncio.create_task(self._cleanup_loop(), name="image-cleanup")

    async def close(self) -> None:
        task, self._cleanup = self._cleanup, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pool, self._pool = self._pool, None
        if pool is not None:
            # Encodes in flight finish (their events are waiting for them); none start.
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)

    # ------------------------------------------------------------------ put and get

    async def put(
        self, account_id: str, stream_id: str, pixels: np.ndarray[Any, Any] | Pixels, policy: ImagePolicy
    ) -> StoredImage:
        if self._pool is None:
            raise ImageStoreError("the image store is not started")
        if self._pending >= self.max_pending:
            IMAGES_DROPPED.labels(reason="busy").inc()
            raise ImageDropped(
                f"{self._pending} images are waiting to be encoded (images.max_pending_encodes)"
            )
        image_id = str(uuid.uuid4())
        self._pending += 1
        job = asyncio.get_running_loop().run_in_executor(
            self._pool, self._encode_and_write, image_id, account_id, stream_id, pixels, policy
        )
        try:
            # Shielded: a caller that gives up (its worker stopping) leaves the job to finish,
            # and the image it wrote is still indexed for the cleanup.
            encoded, expires_at = await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(functools.partial(self._written_late, image_id))
            raise
        except BaseException:
            self._pending -= 1
            IMAGES_DROPPED.labels(reason="error").inc()
            raise
        self._pending -= 1
        self._index(image_id, encoded, expires_at)
        IMAGES_STORED.labels(mimetype=encoded.mimetype).inc()
        IMAGE_BYTES.inc(len(encoded.data))
        return StoredImage(
            image_id, image_url(self.base_url, image_id), encoded.width, encoded.height, encoded.mimetype
        )

    def _index(self, image_id: str, encoded: EncodedImage, expires_at: float) -> None:
        heapq.heappush(self._expiries, (expires_at, image_id, _EXTENSIONS[encoded.mimetype]))

    def _written_late(self, image_id: str, job: asyncio.Future[tuple[EncodedImage, float]]) -> None:
        """The end of a job whose caller was cancelled: its image is kept (and cleaned up) all
        the same."""
        self._pending -= 1
        if not job.cancelled() and job.exception() is None:
            encoded, expires_at = job.result()
            self._index(image_id, encoded, expires_at)

    def _encode_and_write(
        self,
        image_id: str,
        account_id: str,
        stream_id: str,
        pixels: np.ndarray[Any, Any] | Pixels,
        policy: ImagePolicy,
    ) -> tuple[EncodedImage, float]:
        """On the pool's thread: convert a frame's pixels to RGB (only now, only for the frames
        that carry an image), encode, then write the image and its sidecar."""
        started = time.perf_counter()
        encoded = encode(pixels.rgb() if isinstance(pixels, Pixels) else pixels, policy)
        IMAGE_ENCODE.observe(time.perf_counter() - started)
        extension = _EXTENSIONS[encoded.mimetype]
        expires_at = time.time() + policy.ttl
        sidecar = {
            "image_id": image_id,
            "account_id": account_id,
            "stream_id": stream_id,
            "mimetype": encoded.mimetype,
            "width": encoded.width,
            "height": encoded.height,
            "created_at": round(time.time(), 3),
            "expires_at": expires_at,
        }
        _write_atomic(self._image_path(image_id, extension), encoded.data)
        try:
            _write_atomic(self._sidecar_path(image_id), json.dumps(sidecar).encode())
        except BaseException:
            with contextlib.suppress(OSError):
                self._image_path(image_id, extension).unlink()
            raise
        return encoded, expires_at

    async def get(self, image_id: str, account_id: str = "") -> tuple[bytes, str] | None:
        canonical = canonical_uuid(image_id)
        if canonical is None:
            return None
        return await asyncio.to_thread(self._read, canonical, account_id)

    def _read(self, image_id: str, account_id: str) -> tuple[bytes, str] | None:
        meta = _sidecar(self._sidecar_path(image_id))
        if meta is None or float(meta.get("expires_at", 0.0)) <= time.time():
            return None
        if account_id and meta.get("account_id") != account_id:
            return None
        mimetype = str(meta.get("mimetype", ""))
        extension = _EXTENSIONS.get(mimetype)
        if extension is None:
            return None
        try:
            data = self._image_path(image_id, extension).read_bytes()
        except OSError:  # removed by the cleanup between the two reads
            return None
        return data, mimetype

    # ------------------------------------------------------------------ cleanup

    async def cleanup(self) -> int:
        """Remove the files of every image past its expiry; the number removed."""
        now = time.time()
        due: list[tuple[float, str, str]] = []
        while self._expiries and self._expiries[0][0] <= now:
            due.append(heapq.heappop(self._expiries))
        if not due:
            return 0
        await asyncio.to_thread(self._remove, due)
        return len(due)

    def _remove(self, due: list[tuple[float, str, str]]) -> None:
        for _, image_id, extension in due:
            # The sidecar first: an image without one is never served.
            for path in (self._sidecar_path(image_id), self._image_path(image_id, extension)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cleanup_interval)
            try:
                removed = await self.cleanup()
            except Exception:  # a cleanup that failed once tries again next time
                log.exception("image cleanup failed")
            else:
                if removed:
                    log.debug("image cleanup removed %d expired images", removed)

    def _scan(self) -> list[tuple[float, str, str]]:
        """Every image in the directory, as (expires_at, image_id, extension); the files of
        interrupted writes are removed."""
        found: list[tuple[float, str, str]] = []
        sidecars: set[str] = set()
        now = time.time()
        for path in self.directory.glob("*.json"):
            image_id = canonical_uuid(path.stem)
            meta = _sidecar(path) if image_id else None
            if meta is None or image_id is None:
                continue
            extension = _EXTENSIONS.get(str(meta.get("mimetype", "")))
            if extension is None:
                continue
            sidecars.add(image_id)
            found.append((float(meta.get("expires_at", 0.0)), image_id, extension))
        for path in self.directory.iterdir():
            stem = path.name.split(".", 1)[0]
            leftover = path.name.endswith(".tmp") or (
                path.suffix in (".jpg", ".png") and canonical_uuid(stem) and stem not in sidecars
            )
            if leftover:
                with contextlib.suppress(OSError):
                    if now - path.stat().st_mtime > _ORPHAN_AGE:
                        path.unlink()
        return found


def _sidecar(path: Path) -> Mapping[str, Any] | None:
    try:
        meta = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def open_image_store(config: Mapping[str, Any]) -> ImageStore | None:
    """The image store the configuration names (``images.*``); None when ``images.path`` is
    empty: events then carry no images (their image fields are null)."""
    images = section(config, "images")
    path = str(images.get("path") or "")
    if not path:
        return None
    try:
        return LocalImageStore(
            path,
            base_url=str(images.get("base_url") or ""),
            cleanup_interval=float(images["cleanup_interval"]),
            workers=int(images["workers"]),
            max_pending=int(images["max_pending_encodes"]),
        )
    except (TypeError, ValueError) as exc:
        raise ImageStoreError(f"images: {exc}") from None
