"""Event images (lva_core/images): the policy and its schema, encoding, the local store (put, get,
expiry, account isolation, cleanup, the bound on pending encodes), and resolve_images.

Images are checked by decoding them back with Pillow: format, size and pixels.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from PIL import Image

from lva_common.config import DEFAULTS
from lva_core.images import encode as encode_module
from lva_core.images import request as request_module
from lva_core.images.encode import encode, jpeg_quality, scaled_size
from lva_core.images.policy import ImagePolicy, image_policy_schema
from lva_core.images.request import ImageRequest, has_images, resolve_images, strip_images
from lva_core.images.store import (
    ImageDropped,
    ImageStoreError,
    LocalImageStore,
    StoredImage,
    open_image_store,
)
from lva_core.metrics.instruments import IMAGES_DROPPED

ACCOUNT = "0b6f0b43-7a0e-4d2e-9c43-6f1f6a2d9a11"
OTHER = "4c9a3f3e-2b1d-4e5f-8a7b-1c2d3e4f5a6b"
STREAM = "6d1b0f5e-8c1a-4a53-9a49-0b7d6c3c2f10"


def picture(width: int = 1280, height: int = 720, seed: int = 0) -> np.ndarray[Any, Any]:
    """A picture with structure (gradients) and noise, so that quality changes the size."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=-1)
    noisy = base.astype(np.int16) + rng.integers(-40, 40, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def listing(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# ------------------------------------------------------------------ policy


def test_policy_defaults_and_from_parameters() -> None:
    assert ImagePolicy() == ImagePolicy("image/jpeg", 0.9, 1280, 3600.0)
    assert ImagePolicy.from_parameters(None) == ImagePolicy()
    assert ImagePolicy.from_parameters({}) == ImagePolicy()
    # Numbers through protobuf's Struct are floats.
    parsed = ImagePolicy.from_parameters(
        {"mimetype": "image/png", "quality": 0.5, "max_size": 640.0, "ttl": 2}
    )
    assert parsed == ImagePolicy("image/png", 0.5, 640, 2.0)
    assert isinstance(parsed.max_size, int) and parsed.extension == "png"
    for bad in (
        {"mimetype": "image/gif"},
        {"quality": 1.5},
        {"max_size": 0},
        {"max_size": 10.5},
        {"ttl": 0},
        {"ttl": float("inf")},
    ):
        with pytest.raises(ValueError):
            ImagePolicy.from_parameters(bad)


def test_policy_schema_is_a_valid_fragment_with_defaults_and_descriptions() -> None:
    schema = image_policy_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert schema["default"] == {"mimetype": "image/jpeg", "quality": 0.9, "max_size": 1280, "ttl": 3600}
    assert schema["description"]
    for name, prop in schema["properties"].items():
        assert prop.get("description"), name
        assert prop["default"] == schema["default"][name]
    validator = Draft202012Validator(schema)
    assert validator.is_valid({"mimetype": "image/png", "quality": 0, "max_size": 1, "ttl": 0.5})
    assert not validator.is_valid({"mimetype": "image/gif"})
    assert not validator.is_valid({"quality": 1.01})
    assert not validator.is_valid({"ttl": 0})
    assert not validator.is_valid({"size": 3})
    # A copy: changing one never changes the next.
    schema["properties"]["ttl"]["default"] = 1
    assert image_policy_schema()["properties"]["ttl"]["default"] == 3600


# ------------------------------------------------------------------ encoding


@pytest.mark.parametrize(
    ("size", "max_size", "expected"),
    [
        ((1280, 720), 1280, (1280, 720)),
        ((1280, 720), 640, (640, 360)),
        ((1920, 1080), 1280, (1280, 720)),
        ((720, 1280), 640, (360, 640)),  # portrait: the height is the longest side
        ((300, 200), 1280, (300, 200)),  # never upscaled
        ((1000, 3), 100, (100, 1)),  # never 0
    ],
)
def test_scaled_size(size: tuple[int, int], max_size: int, expected: tuple[int, int]) -> None:
    assert scaled_size(*size, max_size) == expected


def test_jpeg_of_the_right_size() -> None:
    encoded = encode(picture(1280, 720), ImagePolicy(max_size=640))
    image = decode(encoded.data)
    assert image.format == "JPEG" and image.mode == "RGB"
    assert image.size == (640, 360) == (encoded.width, encoded.height)
    assert encoded.mimetype == "image/jpeg"


def test_png_is_lossless_and_not_upscaled() -> None:
    pixels = picture(320, 200)
    encoded = encode(pixels, ImagePolicy(mimetype="image/png", max_size=1280))
    image = decode(encoded.data)
    assert image.format == "PNG" and image.size == (320, 200)
    np.testing.assert_array_equal(np.asarray(image), pixels)


def test_jpeg_pixels_resemble_the_picture() -> None:
    pixels = np.zeros((120, 160, 3), np.uint8)
    pixels[:, :80] = (200, 30, 30)
    pixels[:, 80:] = (20, 40, 220)
    decoded = np.asarray(decode(encode(pixels, ImagePolicy(quality=0.9)).data)).astype(int)
    assert np.abs(decoded[60, 20] - (200, 30, 30)).max() < 12
    assert np.abs(decoded[60, 140] - (20, 40, 220)).max() < 12


def test_quality_changes_the_size() -> None:
    pixels = picture(640, 360)
    sizes = [len(encode(pixels, ImagePolicy(quality=q)).data) for q in (0.1, 0.5, 0.9, 1.0)]
    assert sizes == sorted(sizes) and sizes[0] * 3 < sizes[-1], sizes
    assert jpeg_quality(0.9) == 90 and jpeg_quality(0) == 1 and jpeg_quality(1) == 100


def test_a_strided_crop_is_encoded() -> None:
    pixels = picture(400, 300)
    crop = pixels[50:150, 100:300]  # a view, rows not contiguous
    assert not crop.flags.c_contiguous
    image = decode(encode(crop, ImagePolicy(mimetype="image/png")).data)
    np.testing.assert_array_equal(np.asarray(image), crop)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32),
     np.zeros((0, 10, 3), np.uint8)],
)  # fmt: skip
def test_encode_refuses_what_is_no_rgb_picture(bad: np.ndarray[Any, Any]) -> None:
    with pytest.raises(ValueError):
        encode(bad, ImagePolicy())


def test_encode_is_thread_safe() -> None:
    pixels = [picture(320, 180, seed) for seed in range(4)]
    expected = [encode(p, ImagePolicy()).data for p in pixels]
    results: dict[int, list[bytes]] = {}

    def work(index: int) -> None:
        results[index] = [encode(pixels[index], ImagePolicy()).data for _ in range(5)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(4):
        assert results[index] == [expected[index]] * 5


# ------------------------------------------------------------------ the local store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalImageStore]:
    images = LocalImageStore(tmp_path / "images", cleanup_interval=3600)
    await images.start()
    yield images
    await images.close()


async def test_put_then_get(store: LocalImageStore) -> None:
    stored = await store.put(ACCOUNT, STREAM, picture(1280, 720), ImagePolicy(max_size=640))
    assert isinstance(stored, StoredImage)
    assert uuid.UUID(stored.image_id).version == 4
    assert stored.url == f"/1/images/{stored.image_id}"
    assert (stored.width, stored.height, stored.mimetype) == (640, 360, "image/jpeg")
    found = await store.get(stored.image_id)
    assert found is not None
    data, mimetype = found
    assert mimetype == "image/jpeg" and decode(data).size == (640, 360)
    files = sorted(p.name for p in store.directory.iterdir())
    assert files == sorted([f"{stored.image_id}.jpg", f"{stored.image_id}.json"])
    sidecar = json.loads((store.directory / f"{stored.image_id}.json").read_text())
    assert sidecar["account_id"] == ACCOUNT and sidecar["stream_id"] == STREAM
    assert sidecar["mimetype"] == "image/jpeg" and sidecar["expires_at"] > time.time() + 3500


async def test_png_is_stored_as_png(store: LocalImageStore) -> None:
    stored = await store.put("", STREAM, picture(64, 48), ImagePolicy(mimetype="image/png"))
    found = await store.get(stored.image_id)
    assert found is not None and found[1] == "image/png" and decode(found[0]).format == "PNG"
    assert (store.directory / f"{stored.image_id}.png").exists()


async def test_base_url_prefixes_the_url(tmp_path: Path) -> None:
    images = LocalImageStore(tmp_path, base_url="https://lva.example.com/")
    await images.start()
    try:
        stored = await images.put("", STREAM, picture(16, 16), ImagePolicy())
        assert stored.url == f"https://lva.example.com/1/images/{stored.image_id}"
    finally:
        await images.close()


async def test_account_isolation(store: LocalImageStore) -> None:
    mine = await store.put(ACCOUNT, STREAM, picture(32, 32), ImagePolicy())
    anonymous = await store.put("", STREAM, picture(32, 32), ImagePolicy())
    assert await store.get(mine.image_id, ACCOUNT) is not None
    assert await store.get(mine.image_id) is not None  # no account given: served, as streams are
    assert await store.get(mine.image_id, OTHER) is None
    # An image of a stream without an account belongs to no account that could be named.
    assert await store.get(anonymous.image_id) is not None
    assert await store.get(anonymous.image_id, ACCOUNT) is None


async def test_unknown_and_malformed_ids_are_none(store: LocalImageStore) -> None:
    assert await store.get(str(uuid.uuid4())) is None
    assert await store.get("../../etc/passwd") is None
    assert await store.get("not-a-uuid") is None


async def test_an_id_in_upper_case_is_the_same_image(store: LocalImageStore) -> None:
    stored = await store.put("", STREAM, picture(16, 16), ImagePolicy())
    assert await store.get(stored.image_id.upper()) is not None


async def test_expired_images_are_never_served_and_cleanup_removes_their_files(
    store: LocalImageStore,
) -> None:
    short = await store.put(ACCOUNT, STREAM, picture(32, 32), ImagePolicy(ttl=0.3))
    long = await store.put(ACCOUNT, STREAM, picture(32, 32), ImagePolicy(ttl=3600))
    assert await store.get(short.image_id) is not None
    await asyncio.sleep(0.4)
    # Past its ttl, before any cleanup: not served, though its files are still there.
    assert (store.directory / f"{short.image_id}.jpg").exists()
    assert await store.get(short.image_id) is None
    assert await store.cleanup() == 1
    names = {p.name for p in store.directory.iterdir()}
    assert names == {f"{long.image_id}.jpg", f"{long.image_id}.json"}
    assert await store.get(long.image_id) is not None
    assert await store.cleanup() == 0


async def test_the_background_cleanup_runs_every_interval(tmp_path: Path) -> None:
    images = LocalImageStore(tmp_path, cleanup_interval=0.1)
    await images.start()
    try:
        stored = await images.put("", STREAM, picture(16, 16), ImagePolicy(ttl=0.1))
        deadline = time.monotonic() + 5
        while (tmp_path / f"{stored.image_id}.jpg").exists():
            assert time.monotonic() < deadline, "the expired image was not removed"
            await asyncio.sleep(0.05)
        assert not (tmp_path / f"{stored.image_id}.json").exists()
    finally:
        await images.close()


async def test_a_new_store_cleans_up_what_an_earlier_run_left(tmp_path: Path) -> None:
    first = LocalImageStore(tmp_path)
    await first.start()
    expired = await first.put("", STREAM, picture(16, 16), ImagePolicy(ttl=0.1))
    kept = await first.put("", STREAM, picture(16, 16), ImagePolicy(ttl=1.5))
    await first.close()
    # An interrupted write of long ago: an image without its sidecar, a temporary file.
    orphan = tmp_path / f"{uuid.uuid4()}.jpg"
    orphan.write_bytes(b"partial")
    temporary = tmp_path / f"{uuid.uuid4()}.json.1234abcd.tmp"
    temporary.write_bytes(b"{")
    for path in (orphan, temporary):
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    await asyncio.sleep(0.2)

    second = LocalImageStore(tmp_path)
    await second.start()
    try:
        assert listing(tmp_path) == {f"{kept.image_id}.jpg", f"{kept.image_id}.json"}
        assert await second.get(expired.image_id) is None
        assert await second.get(kept.image_id) is not None  # another run's image, served
        await asyncio.sleep(1.4)
        assert await second.cleanup() == 1  # indexed at start, removed when it expires
        assert listing(tmp_path) == set()
    finally:
        await second.close()


async def test_pending_encodes_are_bounded_and_the_rest_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_encode = encode_module.encode

    def slow(pixels: np.ndarray[Any, Any], policy: ImagePolicy) -> Any:
        release.wait(10)
        return real_encode(pixels, policy)

    monkeypatch.setattr("lva_core.images.store.encode", slow)
    images = LocalImageStore(tmp_path, workers=1, max_pending=3)
    await images.start()
    try:
        busy = IMAGES_DROPPED.labels(reason="busy")
        before = busy._value.get()
        waiting = [
            asyncio.create_task(images.put("", STREAM, picture(16, 16), ImagePolicy())) for _ in range(3)
        ]
        await asyncio.sleep(0.05)
        assert images.pending == 3
        for _ in range(2):
            with pytest.raises(ImageDropped):
                await images.put("", STREAM, picture(16, 16), ImagePolicy())
        assert busy._value.get() - before == 2
        release.set()
        stored = await asyncio.gather(*waiting)
        assert len({s.image_id for s in stored}) == 3 and images.pending == 0
        # Room again once they are done.
        await images.put("", STREAM, picture(16, 16), ImagePolicy())
    finally:
        release.set()
        await images.close()


async def test_encoding_runs_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real_encode = encode_module.encode

    def spy(pixels: np.ndarray[Any, Any], policy: ImagePolicy) -> Any:
        threads.append(threading.get_ident())
        return real_encode(pixels, policy)

    monkeypatch.setattr("lva_core.images.store.encode", spy)
    images = LocalImageStore(tmp_path)
    await images.start()
    try:
        await images.put("", STREAM, picture(16, 16), ImagePolicy())
    finally:
        await images.close()
    assert threads and threading.get_ident() not in threads


async def test_a_put_whose_caller_gives_up_is_still_cleaned_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_encode = encode_module.encode

    def slow(pixels: np.ndarray[Any, Any], policy: ImagePolicy) -> Any:
        release.wait(10)
        return real_encode(pixels, policy)

    monkeypatch.setattr("lva_core.images.store.encode", slow)
    images = LocalImageStore(tmp_path)
    await images.start()
    try:
        put = asyncio.create_task(images.put("", STREAM, picture(16, 16), ImagePolicy(ttl=0.1)))
        await asyncio.sleep(0.05)
        put.cancel()
        with pytest.raises(asyncio.CancelledError):
            await put
        assert images.pending == 1  # still encoding
        release.set()
        deadline = time.monotonic() + 5
        while images.pending:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.15)
        assert await images.cleanup() == 1
        assert listing(tmp_path) == set()
    finally:
        release.set()
        await images.close()


async def test_a_put_before_start_fails(tmp_path: Path) -> None:
    with pytest.raises(ImageStoreError):
        await LocalImageStore(tmp_path).put("", STREAM, picture(16, 16), ImagePolicy())


def test_open_image_store_reads_the_configuration(tmp_path: Path) -> None:
    assert DEFAULTS["images"]["path"] == "var/images"
    store = open_image_store(
        {"images": {"path": str(tmp_path / "x"), "base_url": "http://h:1", "max_pending_encodes": 4}}
    )
    assert isinstance(store, LocalImageStore)
    assert store.directory == tmp_path / "x" and store.directory.is_dir()
    assert store.base_url == "http://h:1" and store.max_pending == 4
    assert store.cleanup_interval == DEFAULTS["images"]["cleanup_interval"]
    assert open_image_store({"images": {"path": ""}}) is None
    with pytest.raises(ImageStoreError):
        open_image_store({"images": {"path": str(tmp_path), "max_pending_encodes": 0}})
    with pytest.raises(ImageStoreError):
        open_image_store({"images": {"path": str(tmp_path), "cleanup_interval": "soon"}})
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ImageStoreError):
        open_image_store({"images": {"path": str(blocker / "images")}})


# ------------------------------------------------------------------ resolve_images


def crowd_event(request: ImageRequest | None) -> dict[str, Any]:
    return {
        "event_type": "crowd",
        "people_count": 1,
        "overview": {"time_offset": 1.0, "image": request},
        "tracks": [{"best_shot": request}, {"n": [1, 2]}],
    }


async def test_resolve_images_replaces_every_request_by_its_url(store: LocalImageStore) -> None:
    first = ImageRequest(picture(64, 32), ImagePolicy(max_size=32))
    second = ImageRequest(picture(16, 16), ImagePolicy(mimetype="image/png"))
    event = {"a": {"image": first}, "list": [second, {"deep": [first]}], "n": 1}
    assert has_images(event)
    await resolve_images(event, store, ACCOUNT, STREAM)
    assert not has_images(event)
    url = event["a"]["image"]
    assert isinstance(url, str) and url.startswith("/1/images/")
    assert event["list"][1]["deep"][0] == url  # the same request: stored once, one URL
    assert event["list"][0] != url and event["n"] == 1
    found = await store.get(url.rsplit("/", 1)[1], ACCOUNT)
    assert found is not None and decode(found[0]).size == (32, 16)
    assert len(list(store.directory.glob("*.json"))) == 2
    json.dumps(event)  # what is left is JSON


async def test_resolve_images_without_requests_changes_nothing(store: LocalImageStore) -> None:
    event = crowd_event(None)
    before = json.dumps(event)
    await resolve_images(event, store, ACCOUNT, STREAM)
    assert json.dumps(event) == before and not has_images(event)


class FailingStore:
    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    async def put(self, *args: Any) -> StoredImage:
        self.calls += 1
        raise self.error

    async def get(self, image_id: str, account_id: str = "") -> None:
        return None

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@pytest.mark.parametrize("error", [OSError("disk full"), ImageDropped("busy"), ValueError("bad pixels")])
async def test_resolve_images_survives_failures(
    error: BaseException, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(request_module, "_throttle", request_module._Throttle())
    failing = FailingStore(error)
    for _ in range(3):
        event = crowd_event(ImageRequest(picture(8, 8), ImagePolicy()))
        await resolve_images(event, failing, ACCOUNT, STREAM)  # type: ignore[arg-type]
        # The event is whole, its image null.
        assert event["overview"] == {"time_offset": 1.0, "image": None}
        assert event["tracks"][0] == {"best_shot": None} and event["people_count"] == 1
    assert failing.calls == 3
    # Logged once, not once per event.
    assert sum("image" in r.getMessage() and STREAM in r.getMessage() for r in caplog.records) == 1


async def test_one_failed_image_leaves_the_others(store: LocalImageStore) -> None:
    good = ImageRequest(picture(16, 16), ImagePolicy())
    bad = ImageRequest(np.zeros((4, 4), np.uint8), ImagePolicy())  # not RGB: encoding fails
    event = {"good": good, "bad": bad}
    await resolve_images(event, store, "", STREAM)
    assert isinstance(event["good"], str) and event["bad"] is None


def test_strip_images_replaces_requests_by_none() -> None:
    event = crowd_event(ImageRequest(picture(8, 8), ImagePolicy()))
    strip_images(event)
    assert event["overview"]["image"] is None and event["tracks"][0]["best_shot"] is None
    json.dumps(event)


def test_a_request_keeps_a_reference_and_prints_small() -> None:
    pixels = picture(64, 48)
    request = ImageRequest(pixels, ImagePolicy())
    assert request.pixels is pixels
    assert len(repr(request)) < 200 and "[48, 64, 3]" in repr(request)
