"""person_detector fed I420 planes (``frame_format: i420``) against the same model fed RGB.

One tritonserver serves two copies of person_detector side by side, made from its own
config.pbtxt whatever that declares: ``person_detector_rgb`` (frame_format rgb, IMAGE dims
[-1, -1, 3]) and ``person_detector_i420`` (frame_format i420, IMAGE dims [-1, -1]). Both run the
same model.py, kit and ONNX file (a symlink to the fetched one).

Each photograph of test_model_person.py goes through what the core does with a decoded frame:
it becomes a yuv420p frame (PyAV's swscale, BT.601 limited range, as a camera's decoder would
hand it over; odd last rows and columns are dropped, as the core drops them). The RGB model gets
swscale's full-size rgb24 of that frame, today's contract, and resizes it inside its graph; the
I420 model gets the frame's planes and converts them itself, straight to 300x300, by nearest
neighbour (lva_model_kit.rgb_from_i420). The results must agree: the same count on every
photograph, each box of one matched by a box of the other with IoU >= 0.9, scores within 0.1,
and the boxes still where the people are (the truths of test_model_person.py, same bounds).
Measured: IoU 0.926 at worst (the two-person collage, nearest neighbour against the graph's
bilinear resize of a 1024x1024 frame), median 0.976, 1.0 at 300x300; scores 0.075 apart at
most, the I420 path's the higher. A box shifted by a tenth of its width scores 0.82.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import av
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc.aio as grpcclient
from google.protobuf import text_format
from skimage import data
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from lva_testkit.paths import MODEL_REPOSITORY as MODELS
from lva_testkit.triton import local_triton
from tests.models.test_model_person import (
    ASTRONAUT_TRUTH,
    CAMERAMAN_TRUTH,
    THRESHOLD,
    Detections,
    K,
    assert_same,
    eight_frames,
    iou,
    mirrored,
    motorcycle,
    resized,
    rgb,
    tile,
)
from tools.models import ssdlite

SOURCE = "person_detector"
RGB_MODEL = "person_detector_rgb"
I420_MODEL = "person_detector_i420"
FRAME_PARAMETERS = ("frame_format", "frame_size", "frame_resize")
# Matched boxes of the two paths overlap at least this much (see the module's docstring).
MIN_IOU = 0.9


def variant(repository: Path, name: str, frame_format: str) -> None:
    """A copy of person_detector named ``name`` that declares ``frame_format`` and nothing else
    about frames; its code and kit copied, its ONNX file a symlink to the fetched one."""
    config = text_format.Parse((MODELS / SOURCE / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    config.name = name
    for key in FRAME_PARAMETERS:
        if key in config.parameters:
            del config.parameters[key]
    config.parameters["frame_format"].string_value = frame_format
    (image,) = [tensor for tensor in config.input if tensor.name == "IMAGE"]
    image.ClearField("dims")
    image.dims.extend([-1, -1] if frame_format == "i420" else [-1, -1, 3])
    version = repository / name / "1"
    version.mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(text_format.MessageToString(config))
    for file in ("model.py", "lva_model_kit.py"):
        shutil.copy(MODELS / SOURCE / "1" / file, version / file)
    os.symlink(MODELS / SOURCE / "1" / ssdlite.ONNX_NAME, version / ssdlite.ONNX_NAME)


@pytest.fixture(scope="module")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (MODELS / SOURCE / "1" / ssdlite.ONNX_NAME).exists():
        ssdlite.build(MODELS)
    repository = tmp_path_factory.mktemp("i420-models")
    variant(repository, RGB_MODEL, "rgb")
    variant(repository, I420_MODEL, "i420")
    return repository


@pytest_asyncio.fixture(scope="module")
async def client(model_repository: Path) -> AsyncIterator[grpcclient.InferenceServerClient]:
    server = local_triton(model_repository, startup_timeout=90)
    await server.start()
    triton = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        yield triton
    finally:
        await triton.close()
        await server.stop()


async def detect(client: grpcclient.InferenceServerClient, images: np.ndarray, model: str) -> Detections:
    """``model``'s answer for ``images``, checked against the detector contract's shape rules."""
    image_input = grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")
    image_input.set_data_from_numpy(images)
    result = await client.infer(model, [image_input], client_timeout=30)
    found = Detections(
        result.as_numpy("BOXES"),
        result.as_numpy("SCORES"),
        result.as_numpy("CLASSES"),
        result.as_numpy("COUNT")[:, 0],
    )
    n = images.shape[0]
    assert found.boxes.shape == (n, K, 4) and found.scores.shape == (n, K) and found.classes.shape == (n, K)
    for i, count in enumerate(found.count):
        assert 0 <= count <= K
        assert (found.boxes[i, count:] == 0).all() and (found.scores[i, count:] == 0).all()
        assert (found.classes[i, :count] == 0).all() and (found.scores[i, :count] >= THRESHOLD).all()
        assert (np.diff(found.scores[i, :count]) <= 0).all(), "sorted by score, descending"
        boxes = found.boxes[i, :count]
        assert ((boxes >= 0) & (boxes <= 1)).all(), "normalised to [0, 1]"
    return found


def decoded(image: np.ndarray) -> av.VideoFrame:
    """``image`` as a decoder would hand it over: a yuv420p frame of even width and height."""
    picture = rgb(image)
    height, width = picture.shape[0] & ~1, picture.shape[1] & ~1
    picture = np.ascontiguousarray(picture[:height, :width])
    return av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")


def i420(frame: av.VideoFrame) -> np.ndarray:
    """The frame's Y, U and V planes, without their line padding, packed as [H*3/2, W]."""
    planes = []
    for plane in frame.planes:
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        planes.append(rows[:, : plane.width].ravel())
    return np.concatenate(planes).reshape(frame.height * 3 // 2, frame.width)


def rgb24(frame: av.VideoFrame) -> np.ndarray:
    """What the core ships for an rgb model: swscale's full-size RGB of the frame."""
    array: np.ndarray = frame.reformat(format="rgb24").to_ndarray()
    return array


async def both(
    client: grpcclient.InferenceServerClient, images: list[np.ndarray]
) -> tuple[Detections, Detections]:
    """The RGB model's and the I420 model's answers for one batch of ``images``."""
    frames = [decoded(image) for image in images]
    as_rgb = await detect(client, np.stack([rgb24(frame) for frame in frames]), RGB_MODEL)
    as_i420 = await detect(client, np.stack([i420(frame) for frame in frames]), I420_MODEL)
    return as_rgb, as_i420


def assert_agree(as_rgb: Detections, as_i420: Detections) -> list[float]:
    """Same count on every image, and the boxes matched one to one with IoU >= MIN_IOU."""
    assert as_i420.count.tolist() == as_rgb.count.tolist()
    overlaps = []
    for image in range(as_rgb.count.shape[0]):
        unmatched = list(as_i420.valid_boxes(image))
        for box in as_rgb.valid_boxes(image):
            best = max(range(len(unmatched)), key=lambda k: iou(box, unmatched[k]))
            overlap = iou(box, unmatched.pop(best))
            assert overlap >= MIN_IOU, f"image {image}: {box} (rgb) best matched with IoU {overlap:.3f}"
            overlaps.append(overlap)
    return overlaps


def collage_two() -> np.ndarray:
    tiles = [
        [data.astronaut(), resized(data.chelsea(), 512, 512)],
        [resized(data.coffee(), 512, 512), rgb(data.camera())],
    ]
    return np.concatenate([np.concatenate(row, axis=1) for row in tiles], axis=0)


def collage_four() -> np.ndarray:
    astronaut, cameraman = data.astronaut(), rgb(data.camera())
    top = np.concatenate([astronaut, cameraman], axis=1)
    bottom = np.concatenate([cameraman[:, ::-1], astronaut[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, bottom]))


# Every photograph of test_model_person.py, with how many people it shows.
PHOTOGRAPHS: list[tuple[str, Callable[[], np.ndarray], int]] = [
    ("astronaut", data.astronaut, 1),
    ("cameraman", data.camera, 1),
    ("collage-two", collage_two, 2),
    ("collage-four", collage_four, 4),
    ("cat", data.chelsea, 0),
    ("coffee", data.coffee, 0),
    ("motorcycle", motorcycle, 0),
    ("black", lambda: np.zeros((480, 640, 3), np.uint8), 0),
    ("white", lambda: np.full((480, 640, 3), 255, np.uint8), 0),
    ("astronaut-480x640", lambda: resized(data.astronaut(), 480, 640), 1),
    ("astronaut-720x1280", lambda: resized(data.astronaut(), 720, 1280), 1),
    ("astronaut-300x300", lambda: resized(data.astronaut(), 300, 300), 1),
    ("astronaut-1080x1920", lambda: resized(data.astronaut(), 1080, 1920), 1),
]


async def test_the_copies_declare_their_formats(client: grpcclient.InferenceServerClient) -> None:
    for model, frame_format, dims in (
        (RGB_MODEL, "rgb", ["-1", "-1", "3"]),
        (I420_MODEL, "i420", ["-1", "-1"]),
    ):
        config = (await client.get_model_config(model, as_json=True))["config"]
        assert config["parameters"]["frame_format"]["string_value"] == frame_format
        assert "frame_size" not in config["parameters"]
        (image,) = [tensor for tensor in config["input"] if tensor["name"] == "IMAGE"]
        assert image["dims"] == dims


@pytest.mark.parametrize(
    ("make", "people"), [(make, people) for _, make, people in PHOTOGRAPHS], ids=[p[0] for p in PHOTOGRAPHS]
)
async def test_i420_finds_what_rgb_finds(
    client: grpcclient.InferenceServerClient, make: Callable[[], np.ndarray], people: int
) -> None:
    as_rgb, as_i420 = await both(client, [make()])
    assert as_rgb.count.tolist() == [people]
    assert_agree(as_rgb, as_i420)
    np.testing.assert_allclose(as_i420.scores[0], as_rgb.scores[0], rtol=0, atol=0.1)


async def test_i420_boxes_are_where_the_people_are(client: grpcclient.InferenceServerClient) -> None:
    # The truths of test_model_person.py, with its bounds: no worse than the RGB path.
    _, found = await both(client, [data.astronaut(), data.camera()])
    assert found.count.tolist() == [1, 1]
    assert iou(found.boxes[0, 0], ASTRONAUT_TRUTH) > 0.7
    assert iou(found.boxes[1, 0], CAMERAMAN_TRUTH) > 0.7

    _, found = await both(client, [collage_four()])
    expected = [
        tile(ASTRONAUT_TRUTH, 0, 0, 2, 2),
        tile(CAMERAMAN_TRUTH, 1, 0, 2, 2),
        tile(mirrored(CAMERAMAN_TRUTH), 0, 1, 2, 2),
        tile(mirrored(ASTRONAUT_TRUTH), 1, 1, 2, 2),
    ]
    boxes = found.valid_boxes(0)
    matches = [int(np.argmax([iou(box, truth) for box in boxes])) for truth in expected]
    assert sorted(matches) == [0, 1, 2, 3]
    for truth, match in zip(expected, matches, strict=True):
        assert iou(boxes[match], truth) > 0.6, f"{truth} best matched by {boxes[match]}"


async def test_a_batch_of_eight_equals_eight_single_frames(client: grpcclient.InferenceServerClient) -> None:
    frames = [decoded(frame) for frame in eight_frames()]
    planes = np.stack([i420(frame) for frame in frames])
    batched = await detect(client, planes, I420_MODEL)
    assert batched.count.tolist() == [1, 1, 0, 0, 1, 0, 1, 0]
    for index in range(len(frames)):
        assert_same(batched, index, await detect(client, planes[index : index + 1], I420_MODEL))
    as_rgb = await detect(client, np.stack([rgb24(frame) for frame in frames]), RGB_MODEL)
    assert_agree(as_rgb, batched)


async def test_concurrent_requests_of_different_sizes(client: grpcclient.InferenceServerClient) -> None:
    # Dynamic batching merges these into shared executions; each is converted at its own size.
    pictures = [
        resized(data.astronaut(), 480, 640),
        resized(data.camera(), 720, 1280),
        resized(data.chelsea(), 480, 640),
        resized(data.astronaut(), 720, 1280),
    ] * 3
    planes = [i420(decoded(picture))[np.newaxis] for picture in pictures]
    alone = [await detect(client, plane, I420_MODEL) for plane in planes[:4]]
    together = await asyncio.gather(*(detect(client, plane, I420_MODEL) for plane in planes))
    for index, found in enumerate(together):
        assert_same(found, 0, alone[index % 4])
    assert [found.count[0] for found in together[:4]] == [1, 1, 0, 1]


async def infer(client: grpcclient.InferenceServerClient, model: str, images: np.ndarray) -> None:
    image = grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")
    image.set_data_from_numpy(images)
    await client.infer(model, [image], client_timeout=30)


async def test_a_frame_that_is_not_i420_fails_its_own_request(
    client: grpcclient.InferenceServerClient,
) -> None:
    good = i420(decoded(data.astronaut()))[np.newaxis]
    # RGB to the I420 model: the rank does not fit its config, and Triton refuses it.
    with pytest.raises(InferenceServerException, match="IMAGE"):
        await infer(client, I420_MODEL, data.astronaut()[np.newaxis])
    # Rank 3 but no I420 frame: refused by the model with the reason, request by request.
    for shape, reason in [
        ((1, 10, 8), r"frame_format i420: .*W and H even.*got shape \[1, 10, 8\]"),
        ((1, 9, 7), r"frame_format i420: .*W and H even.*got shape \[1, 9, 7\]"),
        ((1, 0, 8), r"frame_format i420: .*got shape \[1, 0, 8\]"),
    ]:
        bad = infer(client, I420_MODEL, np.zeros(shape, np.uint8))
        fine = detect(client, good, I420_MODEL)
        outcomes = await asyncio.gather(bad, fine, return_exceptions=True)
        assert isinstance(outcomes[0], InferenceServerException), outcomes[0]
        assert re.search(reason, str(outcomes[0])), str(outcomes[0])
        assert isinstance(outcomes[1], Detections) and outcomes[1].count.tolist() == [1]
    # I420 planes to the RGB model: refused as well, and both models go on serving.
    with pytest.raises(InferenceServerException, match="IMAGE"):
        await infer(client, RGB_MODEL, good)
    assert (await detect(client, good, I420_MODEL)).count.tolist() == [1]
    assert (await detect(client, data.astronaut()[np.newaxis], RGB_MODEL)).count.tolist() == [1]
