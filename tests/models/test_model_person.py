"""The person_detector model in a real tritonserver, on real photographs.

The model is SSDLite-MobileNetV2 converted from TensorFlow (tools/models/ssdlite.py). Every
expectation below comes from looking at the photographs, not from the model's own output: a
box is checked against where the person really is, a count against how many people there are.
There is no internet here, so the photographs are the ones scikit-image ships; several people on
one frame come from a collage of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc.aio as grpcclient
from skimage import data, transform

from lva_testkit.paths import MODEL_REPOSITORY as MODELS
from lva_testkit.triton import copy_models, local_triton
from tools.models import ssdlite

MODEL = "person_detector"
K = 100
THRESHOLD = 0.4

# Where the people are, x1, y1, x2, y2 normalised, read off the photographs by eye (hair to the
# bottom edge, shoulder to shoulder or to the outstretched hand; the held helmet and the tripod
# are not the person).
ASTRONAUT_TRUTH = (0.04, 0.03, 0.71, 1.0)
CAMERAMAN_TRUTH = (0.0, 0.13, 0.645, 1.0)


class Detections(NamedTuple):
    boxes: np.ndarray  # [N, K, 4] float32
    scores: np.ndarray  # [N, K] float32
    classes: np.ndarray  # [N, K] int32
    count: np.ndarray  # [N] int32

    def valid_boxes(self, image: int) -> np.ndarray:
        return self.boxes[image, : self.count[image]]


def rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., np.newaxis], 3, axis=2) if image.ndim == 2 else image


def resized(image: np.ndarray, height: int, width: int) -> np.ndarray:
    out = transform.resize(rgb(image), (height, width), preserve_range=True, anti_aliasing=True)
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def iou(a: np.ndarray | tuple[float, ...], b: np.ndarray | tuple[float, ...]) -> float:
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union


@pytest.fixture(scope="module")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding only person_detector, so no other model's state can affect these tests."""
    if not (MODELS / MODEL / "1" / ssdlite.ONNX_NAME).exists():
        # Converts once (TensorFlow in a throw-away env, minutes), then it is a copy from the cache.
        ssdlite.build(MODELS)
    return copy_models(tmp_path_factory.mktemp("models"), MODEL)


@pytest_asyncio.fixture(scope="module")
async def detector(model_repository: Path) -> AsyncIterator[grpcclient.InferenceServerClient]:
    server = local_triton(model_repository, startup_timeout=60)
    await server.start()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        yield client
    finally:
        await client.close()
        await server.stop()


async def detect(client: grpcclient.InferenceServerClient, images: np.ndarray) -> Detections:
    image_input = grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")
    image_input.set_data_from_numpy(images)
    result = await client.infer(MODEL, [image_input], client_timeout=30)
    found = Detections(
        result.as_numpy("BOXES"),
        result.as_numpy("SCORES"),
        result.as_numpy("CLASSES"),
        result.as_numpy("COUNT")[:, 0],
    )
    n = images.shape[0]
    # The contract's shape rules hold for every answer, whatever the picture.
    assert found.boxes.shape == (n, K, 4) and found.boxes.dtype == np.float32
    assert found.scores.shape == (n, K) and found.scores.dtype == np.float32
    assert found.classes.shape == (n, K) and found.classes.dtype == np.int32
    assert found.count.dtype == np.int32
    for i, count in enumerate(found.count):
        assert 0 <= count <= K
        assert (found.boxes[i, count:] == 0).all() and (found.scores[i, count:] == 0).all()
        assert (found.classes[i, count:] == 0).all()
        assert (found.classes[i, :count] == 0).all(), "labels = person: class 0 only"
        assert (found.scores[i, :count] >= THRESHOLD).all()
        assert (np.diff(found.scores[i, :count]) <= 0).all(), "sorted by score, descending"
        boxes = found.boxes[i, :count]
        assert ((boxes >= 0) & (boxes <= 1)).all(), "normalised to [0, 1]"
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all(), "x1 < x2, y1 < y2"
    return found


async def test_config_declares_the_detector_contract(detector: grpcclient.InferenceServerClient) -> None:
    config = (await detector.get_model_config(MODEL, as_json=True))["config"]
    parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
    assert parameters["contract"] == "detector"
    assert parameters["contract_version"] == "1"
    assert parameters["labels"] == "person"
    assert int(parameters["max_detections"]) == K
    assert float(parameters["score_threshold"]) == THRESHOLD
    assert parameters["input_size"] == "300x300"
    assert int(config["max_batch_size"]) == 8
    outputs = {output["name"]: output["dims"] for output in config["output"]}
    assert outputs == {"BOXES": ["-1", "4"], "SCORES": ["-1"], "CLASSES": ["-1"], "COUNT": ["1"]}


async def test_astronaut_is_one_person_where_she_stands(detector: grpcclient.InferenceServerClient) -> None:
    found = await detect(detector, data.astronaut()[np.newaxis])
    assert found.count.tolist() == [1]
    assert iou(found.boxes[0, 0], ASTRONAUT_TRUTH) > 0.7


async def test_cameraman_is_one_person(detector: grpcclient.InferenceServerClient) -> None:
    # A greyscale photograph, given as RGB with three equal channels.
    found = await detect(detector, rgb(data.camera())[np.newaxis])
    assert found.count.tolist() == [1]
    assert iou(found.boxes[0, 0], CAMERAMAN_TRUTH) > 0.7


def tile(box: tuple[float, ...], column: int, row: int, columns: int, rows: int) -> tuple[float, ...]:
    """A box of one photograph, moved to its tile of a collage (all coordinates normalised)."""
    x1, y1, x2, y2 = box
    return ((x1 + column) / columns, (y1 + row) / rows, (x2 + column) / columns, (y2 + row) / rows)


async def test_collage_of_photographs_finds_each_person_in_its_tile(
    detector: grpcclient.InferenceServerClient,
) -> None:
    # 2x2 tiles of 512x512: astronaut | cat / coffee | cameraman. Two people, on a diagonal.
    tiles = [
        [data.astronaut(), resized(data.chelsea(), 512, 512)],
        [resized(data.coffee(), 512, 512), rgb(data.camera())],
    ]
    collage = np.concatenate([np.concatenate(row, axis=1) for row in tiles], axis=0)
    found = await detect(detector, collage[np.newaxis])
    assert found.count.tolist() == [2]
    expected = [tile(ASTRONAUT_TRUTH, 0, 0, 2, 2), tile(CAMERAMAN_TRUTH, 1, 1, 2, 2)]
    boxes = found.valid_boxes(0)
    for truth in expected:
        assert max(iou(box, truth) for box in boxes) > 0.6, f"no detection matches {truth}: {boxes}"
    # And each box lies inside one tile: nothing straddles the seams.
    for x1, y1, x2, y2 in boxes:
        assert (x2 <= 0.5 + 0.02 or x1 >= 0.5 - 0.02) and (y2 <= 0.5 + 0.02 or y1 >= 0.5 - 0.02)


def mirrored(box: tuple[float, ...]) -> tuple[float, ...]:
    x1, y1, x2, y2 = box
    return (1 - x2, y1, 1 - x1, y2)


async def test_four_people_in_a_collage_are_four_boxes(detector: grpcclient.InferenceServerClient) -> None:
    # 2x2 tiles: astronaut | cameraman / both mirrored, swapped. The frame stays square: the
    # graph stretches every frame to 300x300, and a wide panorama squeezes people out of shape
    # (three photographs in a row lose two of them).
    astronaut, cameraman = data.astronaut(), rgb(data.camera())
    top = np.concatenate([astronaut, cameraman], axis=1)
    bottom = np.concatenate([cameraman[:, ::-1], astronaut[:, ::-1]], axis=1)
    found = await detect(detector, np.ascontiguousarray(np.concatenate([top, bottom]))[np.newaxis])
    assert found.count.tolist() == [4]
    expected = [
        tile(ASTRONAUT_TRUTH, 0, 0, 2, 2),
        tile(CAMERAMAN_TRUTH, 1, 0, 2, 2),
        tile(mirrored(CAMERAMAN_TRUTH), 0, 1, 2, 2),
        tile(mirrored(ASTRONAUT_TRUTH), 1, 1, 2, 2),
    ]
    boxes = found.valid_boxes(0)
    # One box per person: each truth is matched by a different detection.
    matches = [int(np.argmax([iou(box, truth) for box in boxes])) for truth in expected]
    assert sorted(matches) == [0, 1, 2, 3]
    for truth, match in zip(expected, matches, strict=True):
        assert iou(boxes[match], truth) > 0.6, f"{truth} best matched by {boxes[match]}"


def motorcycle() -> np.ndarray:
    return data.stereo_motorcycle()[0]


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(data.chelsea, id="cat"),
        pytest.param(data.coffee, id="coffee"),
        pytest.param(motorcycle, id="motorcycle"),
        pytest.param(lambda: np.zeros((480, 640, 3), np.uint8), id="black"),
        pytest.param(lambda: np.full((480, 640, 3), 255, np.uint8), id="white"),
    ],
)
async def test_no_person_no_detection(
    detector: grpcclient.InferenceServerClient, image: Callable[[], np.ndarray]
) -> None:
    found = await detect(detector, np.ascontiguousarray(rgb(image()))[np.newaxis])
    assert found.count.tolist() == [0]


def eight_frames() -> np.ndarray:
    """Eight different 512x512 frames: some with one person, some with none."""
    frames = [
        data.astronaut(),
        rgb(data.camera()),
        resized(data.chelsea(), 512, 512),
        resized(data.coffee(), 512, 512),
        data.astronaut()[:, ::-1],
        resized(motorcycle(), 512, 512),
        rgb(data.camera())[:, ::-1],
        resized(data.rocket(), 512, 512),
    ]
    return np.ascontiguousarray(np.stack(frames))


def assert_same(batched: Detections, index: int, single: Detections) -> None:
    assert batched.count[index] == single.count[0]
    np.testing.assert_array_equal(batched.classes[index], single.classes[0])
    # One batch or eight runs of the same network: equal up to float summation order.
    np.testing.assert_allclose(batched.boxes[index], single.boxes[0], rtol=0, atol=1e-4)
    np.testing.assert_allclose(batched.scores[index], single.scores[0], rtol=0, atol=1e-4)


async def test_batch_of_eight_equals_eight_single_frames(detector: grpcclient.InferenceServerClient) -> None:
    frames = eight_frames()
    batched = await detect(detector, frames)
    assert batched.count.tolist() == [1, 1, 0, 0, 1, 0, 1, 0]
    for index, frame in enumerate(frames):
        assert_same(batched, index, await detect(detector, frame[np.newaxis]))


async def test_same_frame_eight_times_gives_eight_equal_answers(
    detector: grpcclient.InferenceServerClient,
) -> None:
    astronaut = data.astronaut()
    single = await detect(detector, astronaut[np.newaxis])
    batched = await detect(detector, np.stack([astronaut] * 8))
    for index in range(8):
        assert_same(batched, index, single)


@pytest.mark.parametrize("height, width", [(480, 640), (720, 1280), (300, 300), (1080, 1920)])
async def test_any_frame_size_gives_normalised_boxes(
    detector: grpcclient.InferenceServerClient, height: int, width: int
) -> None:
    # Stretching the photograph does not move the person in normalised coordinates.
    found = await detect(detector, resized(data.astronaut(), height, width)[np.newaxis])
    assert found.count.tolist() == [1]
    assert iou(found.boxes[0, 0], ASTRONAUT_TRUTH) > 0.6


async def test_concurrent_requests_of_different_sizes(detector: grpcclient.InferenceServerClient) -> None:
    # Dynamic batching puts these into shared executions; the model must split them by size and
    # still answer each request with its own frame's result.
    frames = [
        resized(data.astronaut(), 480, 640),
        resized(data.camera(), 720, 1280),
        resized(data.chelsea(), 480, 640),
        resized(data.astronaut(), 720, 1280),
    ] * 3
    alone = [await detect(detector, frame[np.newaxis]) for frame in frames[:4]]
    together = await asyncio.gather(*(detect(detector, frame[np.newaxis]) for frame in frames))
    for index, found in enumerate(together):
        assert_same(found, 0, alone[index % 4])
    assert [found.count[0] for found in together[:4]] == [1, 1, 0, 1]
