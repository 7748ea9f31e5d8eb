"""lva_model_kit: the helper module that every Triton model of triton_models/ shares.

The source is ``triton_models/lva_model_kit.py``; each model version directory that uses it holds a
copy next to its ``model.py``, because Triton's Python backend imports ``model.py`` with that
directory on ``sys.path`` (``tools/sync_model_kit.py`` writes the copies).

* Unit tests of the kit, in this environment, with the stub's own ``triton_python_backend_utils``
  (the pure-Python file of the nvidia-pytriton wheel) and the real ``config.pbtxt`` files parsed
  into the JSON that the backend hands to ``initialize``.
* Provider selection against the real ONNX Runtime of the Triton environment.
* Frame formats: the ``frame_format`` declaration, and ``rgb_from_i420`` against PyAV's own
  conversion (swscale) of real photographs, at full size and resized, in both environments.
* The check that every copy equals the source, and the copy tool itself.
* Real tritonserver loads: the models import their copy, and a model whose config.pbtxt lacks a
  required parameter fails to load with the kit's one message, in the load error and in the log.

Why one file of over 400 lines: the kit's unit tests and its real-Triton load tests share
the parsed configs and the copied model repository.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import av
import numpy as np
import onnx
import pytest
import tritonclient.grpc.aio as grpcclient
from google.protobuf import json_format, text_format
from PIL import Image
from skimage import data
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from lva_core.runtime.triton_server import LocalTriton
from lva_testkit.paths import MODEL_REPOSITORY, REPO, TRITON_ENV
from lva_testkit.triton import local_triton
from tools import sync_model_kit
from tools.models import testdata

KIT_SOURCE = MODEL_REPOSITORY / "lva_model_kit.py"
MODELS = ("face_attributes", "face_detector", "frame_stats", "person_detector", "person_detector_tiled")
# The kit's message for a missing parameter, whichever model: model, parameter and config.pbtxt.
MISSING = re.compile(
    r"ModelConfigError: (?P<model>\w+): config\.pbtxt lacks the parameter '(?P<name>\w+)', which model\.py "
    r'requires; add parameters \{ key: "(?P=name)" value: \{ string_value: "\.\.\." \} \} '
    r"to (?P=model)/config\.pbtxt"
)
# For each model that reads parameters, one that its initialize() requires and reads before it
# opens any weights file: the load must fail on the parameter, weights present or not.
REQUIRED_PARAMETER = {
    "face_attributes": "crop_shift",
    "face_detector": "max_detections",
    "person_detector": "score_threshold",
}


def backend_python_dir() -> Path:
    """The Python backend of the nvidia-pytriton wheel: its stub and triton_python_backend_utils.py."""
    found = sorted(TRITON_ENV.glob("lib/python3*/site-packages/pytriton/tritonserver/backends/python"))
    assert found, f"no Python backend under {TRITON_ENV}: run `make triton-env`"
    return found[0]


def model_config(model: str, text: str | None = None) -> dict[str, Any]:
    """``<model>/config.pbtxt`` (or ``text``) as the JSON that the Python backend gives initialize()."""
    text = (MODEL_REPOSITORY / model / "config.pbtxt").read_text() if text is None else text
    message = text_format.Parse(text, model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class FakeTritonError:
    """Stands in for pb_utils.TritonError, which the stub's C++ side adds to the module."""

    def __init__(self, message: str) -> None:
        self.message = message


class FakeInferenceResponse:
    """Stands in for pb_utils.InferenceResponse (added by the stub as well)."""

    def __init__(self, output_tensors: list[Any], error: FakeTritonError | None = None) -> None:
        self.output_tensors = output_tensors
        self.error = error


@pytest.fixture(scope="module")
def kit() -> Iterator[ModuleType]:
    """The kit's source file imported here, on the wheel's real triton_python_backend_utils."""
    utils_spec = importlib.util.spec_from_file_location(
        "triton_python_backend_utils", backend_python_dir() / "triton_python_backend_utils.py"
    )
    assert utils_spec is not None and utils_spec.loader is not None
    utils = importlib.util.module_from_spec(utils_spec)
    utils_spec.loader.exec_module(utils)
    utils.TritonError = FakeTritonError  # type: ignore[attr-defined]
    utils.InferenceResponse = FakeInferenceResponse  # type: ignore[attr-defined]
    spec = importlib.util.spec_from_file_location("lva_model_kit", KIT_SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "triton_python_backend_utils", utils)
        patch.setitem(sys.modules, "lva_model_kit", module)
        spec.loader.exec_module(module)
    yield module


# --- parameter ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_a_missing_required_parameter_is_one_clear_error_for_every_model(kit: ModuleType, model: str) -> None:
    config = model_config(model)
    declared = sorted(config.get("parameters", {}))
    # One of the model's own parameters taken out (frame_stats declares none: any name is missing).
    name = declared[0] if declared else "labels"
    config.get("parameters", {}).pop(name, None)
    with pytest.raises(kit.ModelConfigError) as caught:
        kit.parameter(config, name, int)
    match = MISSING.fullmatch(f"{type(caught.value).__name__}: {caught.value}")
    assert match is not None, str(caught.value)
    assert (match["model"], match["name"]) == (model, name)
    assert isinstance(caught.value, ValueError)


def test_parameter_reads_casts_and_defaults(kit: ModuleType) -> None:
    config = model_config("person_detector")
    assert kit.parameter(config, "labels") == "person"
    assert kit.parameter(config, "max_detections", int) == 100
    assert kit.parameter(config, "score_threshold", float) == pytest.approx(0.4)
    # The default is for an absent parameter only, and is returned as it is.
    assert kit.parameter(config, "tile_overlap", float, default=0.5) == 0.5
    assert kit.parameter(config, "max_detections", int, default=7) == 100
    assert kit.parameter(config, "tile_overlap", float, default=None) is None


def test_a_value_the_model_cannot_use_names_model_parameter_and_value(kit: ModuleType) -> None:
    text = (MODEL_REPOSITORY / "face_detector" / "config.pbtxt").read_text()
    assert text.count('string_value: "64"') == 1
    config = model_config("face_detector", text.replace('string_value: "64"', 'string_value: "many"'))
    with pytest.raises(kit.ModelConfigError) as caught:
        kit.parameter(config, "max_detections", int)
    assert str(caught.value).startswith(
        "face_detector: the parameter 'max_detections' in config.pbtxt is 'many', which model.py cannot use: "
    )

    def size(text: str) -> tuple[int, int]:
        raise ValueError(f"input_size must be WxH, got {text!r}")

    with pytest.raises(kit.ModelConfigError, match=r"'input_size' .* input_size must be WxH, got '640x480'"):
        kit.parameter(config, "input_size", size)


# --- providers and sessions --------------------------------------------------------------------

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.mark.parametrize(
    ("kind", "available", "expected"),
    [
        ("GPU", [CUDA, CPU], [(CUDA, {"device_id": 1}), CPU]),
        # No CUDA provider (the CPU onnxruntime): the CPU, whatever the instance.
        ("GPU", ["AzureExecutionProvider", CPU], [CPU]),
        # An explicit KIND_CPU is respected even where onnxruntime-gpu lists CUDA.
        ("CPU", [CUDA, CPU], [CPU]),
        ("MODEL", [CUDA, CPU], [CPU]),
    ],
)
def test_select_providers(kit: ModuleType, kind: str, available: list[str], expected: list[Any]) -> None:
    args = {"model_instance_kind": kind, "model_instance_device_id": "1"}
    assert kit.select_providers(args, available) == expected


@pytest.mark.parametrize(
    ("parameters", "groups", "cores", "expected"),
    [
        ({}, [{"count": 2, "kind": "KIND_CPU"}], 2, 1),  # the shipped person_detector on two cores
        ({}, [{"count": 2}], 16, 8),
        ({}, [{"count": 1}, {"count": 2}], 16, 5),
        ({}, [], 4, 4),  # no instance_group: one instance
        ({}, [{"count": 4}], 2, 1),  # never fewer than one
        ({"intra_op_threads": {"string_value": "3"}}, [{"count": 2}], 16, 3),  # given: as it is
        ({"intra_op_threads": {"string_value": "0"}}, [{"count": 2}], 8, 4),
    ],
)
def test_intra_op_threads_share_the_cores_among_instances(
    kit: ModuleType, parameters: dict[str, Any], groups: list[dict[str, Any]], cores: int, expected: int
) -> None:
    config = {"name": "m", "parameters": parameters, "instance_group": groups}
    assert kit.intra_op_threads(config, cores) == expected


def test_provider_selection_falls_back_to_cpu_here(tmp_path: Path) -> None:
    """The real ONNX Runtime of the Triton environment: a GPU instance without CUDA gets the CPU."""
    version = tmp_path / "model" / "1"
    version.mkdir(parents=True)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 2])],
    )
    onnx.save(
        onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8),
        version / "identity.onnx",
    )
    probe = f"""
import json, sys
sys.path[:0] = [{str(backend_python_dir())!r}, {str(MODEL_REPOSITORY)!r}]
import numpy as np, onnxruntime
import lva_model_kit as kit
args = {{"model_instance_kind": "GPU", "model_instance_device_id": "0",
        "model_repository": {str(tmp_path / "model")!r}, "model_version": "1"}}
session = kit.session(args, "identity.onnx")
print(json.dumps({{
    "available": onnxruntime.get_available_providers(),
    "gpu_instance": kit.select_providers(args),
    "cpu_instance": kit.select_providers({{**args, "model_instance_kind": "CPU"}}),
    "session": session.get_providers(),
    "output": session.run(None, {{"x": np.array([[1.0, 2.0]], np.float32)}})[0].tolist(),
}}))
"""
    done = subprocess.run(
        [str(TRITON_ENV / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["cpu_instance"] == [CPU]
    assert seen["output"] == [[1.0, 2.0]]
    if CUDA in seen["available"]:
        assert seen["gpu_instance"] == [[CUDA, {"device_id": 0}], CPU]
    else:
        assert seen["gpu_instance"] == [CPU]
        assert seen["session"] == [CPU]


def test_model_file_must_exist(kit: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "weights.onnx").write_bytes(b"x")
    args = {"model_repository": str(tmp_path), "model_version": "1"}
    assert kit.model_file(args, "weights.onnx") == str(tmp_path / "1" / "weights.onnx")
    with pytest.raises(FileNotFoundError, match=r"1/absent\.onnx not found: run `make models`"):
        kit.model_file(args, "absent.onnx")


# --- outputs and responses ---------------------------------------------------------------------


def test_output_dtypes_come_from_the_config(kit: ModuleType) -> None:
    assert kit.output_dtypes(model_config("frame_stats"), ["MEAN_RGB", "COUNT"]) == {
        "MEAN_RGB": np.float32,
        "COUNT": np.int32,
    }
    detector = kit.output_dtypes(model_config("face_detector"), ["BOXES", "CLASSES", "LANDMARKS"])
    assert detector == {"BOXES": np.float32, "CLASSES": np.int32, "LANDMARKS": np.float32}


def test_error_response_fails_its_request_with_the_message(kit: ModuleType) -> None:
    response = kit.error_response("IMAGE must not be empty")
    assert isinstance(response, FakeInferenceResponse)
    assert response.output_tensors == []
    assert response.error is not None and response.error.message == "IMAGE must not be empty"


# --- group_by_shape ----------------------------------------------------------------------------


def frames(rows: int, height: int, width: int, first: int) -> np.ndarray:
    """``rows`` frames whose pixels all read ``first``, ``first + 1``, ...: each row is recognisable."""
    values = np.arange(first, first + rows, dtype=np.uint8)
    return np.broadcast_to(values[:, None, None, None], (rows, height, width, 3)).copy()


def test_group_by_shape_keeps_request_order(kit: ModuleType) -> None:
    requests: list[np.ndarray | None] = [
        frames(1, 4, 6, 10),  # 0: 4x6
        frames(2, 8, 8, 20),  # 1: 8x8
        frames(3, 4, 6, 30),  # 2: 4x6
        None,  # 3: answered already (an invalid request)
        frames(1, 8, 8, 40),  # 4: 8x8
        frames(2, 6, 4, 50),  # 5: 6x4, the same pixels as 4x6 but another shape
    ]
    groups = kit.group_by_shape(requests)
    # Groups in the order their shape first appears, members in request order.
    assert [group.members for group in groups] == [(0, 2), (1, 4), (5,)]
    assert [group.rows for group in groups] == [(1, 3), (2, 1), (2,)]
    np.testing.assert_array_equal(groups[0].batch, np.concatenate([requests[0], requests[2]]))
    np.testing.assert_array_equal(groups[1].batch, np.concatenate([requests[1], requests[4]]))
    # A group of one is the request's own array, not a copy.
    assert groups[2].batch is requests[5]

    # Each request gets back exactly its own rows of what the batch produced, in order.
    answers: list[dict[str, np.ndarray] | None] = [None] * len(requests)
    for group in groups:
        outputs = {"FIRST": group.batch[:, 0, 0, 0].astype(np.int32), "DOUBLE": group.batch * 2}
        for index, rows in group.split(outputs):
            assert answers[index] is None
            answers[index] = rows
    assert answers[3] is None
    for index, request in enumerate(requests):
        if request is None:
            continue
        answer = answers[index]
        assert answer is not None
        np.testing.assert_array_equal(answer["FIRST"], request[:, 0, 0, 0])
        np.testing.assert_array_equal(answer["DOUBLE"], request * 2)


def test_group_by_shape_of_nothing(kit: ModuleType) -> None:
    assert kit.group_by_shape([]) == []
    assert kit.group_by_shape([None, None]) == []


# --- frame formats -----------------------------------------------------------------------------


def with_frame_format(model: str, value: str | None, dims: list[int] | None = None) -> dict[str, Any]:
    """``model``'s config JSON with ``frame_format`` set to ``value`` (None: absent), and the
    IMAGE dims replaced by ``dims`` when given."""
    config = model_config(model)
    parameters = config.setdefault("parameters", {})
    for key in ("frame_format", "frame_size", "frame_resize"):
        parameters.pop(key, None)
    if value is not None:
        parameters["frame_format"] = {"string_value": value}
    if dims is not None:
        (image,) = [tensor for tensor in config["input"] if tensor["name"] == "IMAGE"]
        image["dims"] = [str(d) for d in dims]
    return config


@pytest.mark.parametrize(
    ("value", "dims", "expected"),
    [
        (None, None, "rgb"),
        ("rgb", None, "rgb"),
        ("", None, "rgb"),
        ("i420", [-1, -1], "i420"),
        # As leniently as the core reads it.
        (" I420 ", [-1, -1], "i420"),
    ],
)
def test_frame_format_reads_the_declaration(
    kit: ModuleType, value: str | None, dims: list[int] | None, expected: str
) -> None:
    assert kit.frame_format(with_frame_format("person_detector", value, dims)) == expected


@pytest.mark.parametrize(
    ("value", "dims", "message"),
    [
        (
            "yuv420p",
            None,
            r"person_detector: the parameter 'frame_format' in config\.pbtxt is 'yuv420p', .*rgb, i420",
        ),
        # A declaration that the IMAGE input cannot carry fails the load, not every request.
        ("i420", None, r"frame_format 'i420' needs the IMAGE dims \[ -1, -1 \] .* declares \[-1, -1, 3\]"),
        ("rgb", [-1, -1], r"frame_format 'rgb' needs the IMAGE dims \[ -1, -1, 3 \] .* declares \[-1, -1\]"),
        (None, [-1, -1], r"frame_format 'rgb' needs the IMAGE dims"),
    ],
)
def test_a_frame_format_the_model_cannot_take_fails_the_load(
    kit: ModuleType, value: str | None, dims: list[int] | None, message: str
) -> None:
    with pytest.raises(kit.ModelConfigError, match=message):
        kit.frame_format(with_frame_format("person_detector", value, dims))


def test_i420_size_of_a_batch(kit: ModuleType) -> None:
    assert kit.i420_size((4, 1080, 1280)) == (1280, 720)
    assert kit.i420_size((1, 3, 2)) == (2, 2)
    for shape in [
        (1, 720, 1280, 3),
        (1080, 1280),
        (1, 1080, 1279),
        (1, 1079, 1280),
        (1, 0, 4),
    ]:
        with pytest.raises(ValueError, match=r"an I420 IMAGE must be \[N, H\*3/2, W\]"):
            kit.i420_size(shape)


def yuv420p(image: np.ndarray) -> av.VideoFrame:
    """A photograph as a decoder hands it over: yuv420p (swscale's BT.601 limited range), with
    its odd last row and column dropped, as the core drops them."""
    picture = np.repeat(image[..., np.newaxis], 3, axis=2) if image.ndim == 2 else image
    height, width = picture.shape[0] & ~1, picture.shape[1] & ~1
    rgb = np.ascontiguousarray(picture[:height, :width])
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


def packed(frame: av.VideoFrame) -> np.ndarray:
    """The frame's planes without their line padding, one after the other: I420 [H*3/2, W]."""
    planes = []
    for plane in frame.planes:
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        planes.append(rows[:, : plane.width].ravel())
    return np.concatenate(planes).reshape(frame.height * 3 // 2, frame.width)


@pytest.fixture(scope="module")
def photographs(fetched_test_file: Callable[[str], None]) -> dict[str, av.VideoFrame]:
    """Real photographs as yuv420p frames: scikit-image's, and a 1280x720 cut of the group photo."""
    fetched_test_file(testdata.GROUP_PHOTO.name)
    with Image.open(testdata.path(testdata.GROUP_PHOTO)) as image:
        group = np.asarray(image.convert("RGB"))
    pictures = {
        "astronaut": data.astronaut(),
        "cameraman": data.camera(),  # greyscale: U = V = 128
        "coffee": data.coffee(),
        "cat": data.chelsea(),  # 451 wide: cut to 450
        "rocket": data.rocket(),  # 427 high: cut to 426, so H/2 is odd and U starts mid-row
        "group-720p": group[83:803],
    }
    return {name: yuv420p(picture) for name, picture in pictures.items()}


# swscale's x86 converter, which the kit reproduces (fixed point and flooring); elsewhere swscale
# runs other code and may differ by one here and there.
X86 = platform.machine().lower() in {"x86_64", "amd64"}


def test_rgb_from_i420_is_swscales_conversion_at_full_size(
    kit: ModuleType, photographs: dict[str, av.VideoFrame]
) -> None:
    for name, frame in photographs.items():
        planes = packed(frame)
        np.testing.assert_array_equal(planes, frame.to_ndarray())  # PyAV's own I420 layout
        ours = kit.rgb_from_i420(planes[np.newaxis])
        theirs = frame.reformat(format="rgb24").to_ndarray()
        assert ours.shape == (1, frame.height, frame.width, 3) and ours.dtype == np.uint8
        difference = np.abs(ours[0].astype(np.int16) - theirs)
        # Measured here (x86-64, FFmpeg 8.1 of the PyAV wheel): 0 on every photograph. Rounding
        # to nearest instead of flooring each term as swscale does gives a mean of 1.07.
        if X86:
            assert difference.max() == 0, f"{name}: {difference.mean():.3f} mean, {difference.max()} max"
        assert difference.mean() <= 0.5 and difference.max() <= 2, name


def test_rgb_from_i420_of_a_batch_equals_each_frame_alone(kit: ModuleType) -> None:
    rng = np.random.default_rng(7)
    batch = rng.integers(0, 256, (5, 426 * 3 // 2, 640), dtype=np.uint8)
    for size in (None, (300, 300), (64, 48)):
        together = kit.rgb_from_i420(batch, size)
        for index in range(batch.shape[0]):
            np.testing.assert_array_equal(
                together[index : index + 1], kit.rgb_from_i420(batch[index : index + 1], size)
            )
    # Any bytes, extremes included: still swscale's, clamped at 0 and 255.
    frame = av.VideoFrame.from_ndarray(batch[0], format="yuv420p")
    theirs = frame.reformat(format="rgb24").to_ndarray()
    ours = kit.rgb_from_i420(batch[:1])[0]
    assert np.abs(ours.astype(np.int16) - theirs).max() <= (0 if X86 else 2)


@pytest.mark.parametrize(
    ("width", "height"), [(300, 300), (640, 360), (301, 199), (7, 5), (1, 1), (2560, 1440)]
)
def test_resizing_is_nearest_neighbour_at_pixel_centres(kit: ModuleType, width: int, height: int) -> None:
    # Output pixel (i, j) is the full-size conversion's pixel under ((j + 0.5) W / w, (i + 0.5) H / h),
    # chroma included, whatever the size: exactly, so the sampling phase is checked too.
    rng = np.random.default_rng(11)
    planes = rng.integers(0, 256, (2, 720 * 3 // 2, 1280), dtype=np.uint8)
    full = kit.rgb_from_i420(planes)
    rows = (np.arange(height) * 2 + 1) * 720 // (2 * height)
    cols = (np.arange(width) * 2 + 1) * 1280 // (2 * width)
    resized = kit.rgb_from_i420(planes, (width, height))
    assert resized.shape == (2, height, width, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized, full[:, rows][:, :, cols])
    # Half size: the odd rows and columns; double: each pixel four times.
    np.testing.assert_array_equal(kit.rgb_from_i420(planes, (640, 360)), full[:, 1::2, 1::2])
    np.testing.assert_array_equal(
        kit.rgb_from_i420(planes[:1], (2560, 1440))[0], full[0].repeat(2, 0).repeat(2, 1)
    )
    np.testing.assert_array_equal(kit.rgb_from_i420(planes, (1280, 720)), full)


def test_resized_conversion_is_close_to_pyavs_resized_frame(
    kit: ModuleType, photographs: dict[str, av.VideoFrame]
) -> None:
    # PyAV's reformat to the same size filters (bilinear); nearest neighbour does not, so they
    # differ at edges, and swscale's scaled path rounds a little differently. Measured on these
    # photographs: mean absolute difference 1.6 to 5.2 of 255, the mean of a channel off by at
    # most 2.04 (upscaled x2); a wrong matrix, range or channel order is tens of levels away.
    for name, frame in photographs.items():
        planes = packed(frame)[np.newaxis]
        for width, height in [(300, 300), (640, 360), (301, 199), (frame.width * 2, frame.height * 2)]:
            ours = kit.rgb_from_i420(planes, (width, height))[0]
            assert ours.shape == (height, width, 3), (name, width, height)
            theirs = frame.reformat(format="rgb24", width=width, height=height).to_ndarray()
            difference = ours.astype(np.float64) - theirs
            assert np.abs(difference).mean() <= 6, (name, width, height, np.abs(difference).mean())
            assert np.abs(difference.mean(axis=(0, 1))).max() <= 3, (
                name,
                width,
                height,
                difference.mean(axis=(0, 1)),
            )


def test_rgb_from_i420_refuses_what_is_not_i420(kit: ModuleType) -> None:
    with pytest.raises(ValueError, match=r"got shape \[1, 720, 1280, 3\]"):
        kit.rgb_from_i420(np.zeros((1, 720, 1280, 3), np.uint8))
    with pytest.raises(ValueError, match=r"W and H even .* got shape \[1, 9, 7\]"):
        kit.rgb_from_i420(np.zeros((1, 9, 7), np.uint8))
    with pytest.raises(ValueError, match="must be uint8, got uint16"):
        kit.rgb_from_i420(np.zeros((1, 9, 8), np.uint16))
    with pytest.raises(ValueError, match=r"at least 1x1, got \(0, 300\)"):
        kit.rgb_from_i420(np.zeros((1, 9, 8), np.uint8), (0, 300))


def test_the_triton_environment_converts_the_same(kit: ModuleType, tmp_path: Path) -> None:
    """The copy runs under the Triton environment's numpy (< 2): the same bytes as here."""
    rng = np.random.default_rng(5)
    planes = rng.integers(0, 256, (3, 426 * 3 // 2, 640), dtype=np.uint8)
    np.save(tmp_path / "planes.npy", planes)
    probe = f"""
import sys
sys.path[:0] = [{str(backend_python_dir())!r}, {str(MODEL_REPOSITORY / "person_detector" / "1")!r}]
import numpy as np
import lva_model_kit as kit
planes = np.load({str(tmp_path / "planes.npy")!r})
np.save({str(tmp_path / "full.npy")!r}, kit.rgb_from_i420(planes))
np.save({str(tmp_path / "small.npy")!r}, kit.rgb_from_i420(planes, (300, 300)))
print(np.__version__)
"""
    done = subprocess.run(
        [str(TRITON_ENV / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1."), f"the Triton environment has numpy {done.stdout}"
    np.testing.assert_array_equal(np.load(tmp_path / "full.npy"), kit.rgb_from_i420(planes))
    np.testing.assert_array_equal(np.load(tmp_path / "small.npy"), kit.rgb_from_i420(planes, (300, 300)))


# --- the copies --------------------------------------------------------------------------------


def test_every_model_uses_its_own_copy_of_the_kit() -> None:
    copies = sync_model_kit.copies(MODEL_REPOSITORY)
    assert {copy.parent.parent.name for copy in copies} == set(MODELS)
    for copy in copies:
        assert "import lva_model_kit" in (copy.parent / "model.py").read_text(), copy
    stale = sync_model_kit.stale_copies(MODEL_REPOSITORY)
    assert stale == [], f"copies differ from {KIT_SOURCE}: run `python tools/sync_model_kit.py`"
    # The copies are committed, not git-ignored like the weights beside them.
    ignored = subprocess.run(
        ["git", "check-ignore", *(str(copy) for copy in copies)], cwd=REPO, capture_output=True, text=True
    )
    assert ignored.stdout == "", f"git ignores {ignored.stdout}"


def sync_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "sync_model_kit.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_copy_tool_finds_and_refreshes_stale_copies(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(
        MODEL_REPOSITORY, repo, ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.json", ".fetched")
    )
    edited = repo / "face_detector" / "1" / "lva_model_kit.py"
    edited.write_text(edited.read_text() + "# edited in place\n")
    removed = repo / "person_detector" / "1" / "lva_model_kit.py"
    removed.unlink()
    # A new version that uses the kit but has no copy yet, and one that does not use it.
    (repo / "frame_stats" / "2").mkdir()
    shutil.copy(repo / "frame_stats" / "1" / "model.py", repo / "frame_stats" / "2" / "model.py")
    (repo / "frame_stats" / "3").mkdir()
    (repo / "frame_stats" / "3" / "model.py").write_text("class TritonPythonModel:\n    pass\n")

    check = sync_tool("--repo", str(repo), "--check")
    assert check.returncode == 1
    reported = {Path(line.split()[1]) for line in check.stdout.splitlines()}
    assert reported == {edited, removed, repo / "frame_stats" / "2" / "lva_model_kit.py"}

    assert sync_tool("--repo", str(repo)).returncode == 0
    assert sync_tool("--repo", str(repo), "--check").returncode == 0
    source = (repo / "lva_model_kit.py").read_bytes()
    for copy in (edited, removed, repo / "frame_stats" / "2" / "lva_model_kit.py"):
        assert copy.read_bytes() == source
    assert not (repo / "frame_stats" / "3" / "lva_model_kit.py").exists()
    assert sorted(p.name for p in (repo / "frame_stats" / "2").iterdir()) == ["lva_model_kit.py", "model.py"]


def test_the_repository_check_passes_here() -> None:
    check = sync_tool("--check")
    assert (check.returncode, check.stdout) == (0, ""), check.stdout + check.stderr


# --- real Triton -------------------------------------------------------------------------------


def drop_parameter(text: str, name: str) -> str:
    """``text`` (a config.pbtxt) without parameter ``name``, in either form the configs use."""
    entry = rf'\{{\s*key:\s*"{name}"\s*,?\s*value:\s*\{{[^{{}}]*\}}\s*\}}\s*,?'  # in a parameters [ ] list
    block = rf'parameters\s*\{{(?:\s*#[^\n]*)*\s*key:\s*"{name}"\s*value:\s*\{{[^{{}}]*\}}\s*\}}'
    dropped, count = re.subn(f"{block}|{entry}", "", text)
    assert count == 1 and f'"{name}"' not in dropped, f"{name} not dropped cleanly"
    return dropped


def new_triton(
    repo: Path, log_path: Path, mode: str = "explicit", extra: list[str] | None = None
) -> LocalTriton:
    # The kit's launcher: on fresh ports if another process took one first (lva_testkit/ports.py).
    return local_triton(
        repo, model_control_mode=mode, startup_timeout=60, extra_args=extra, log_path=log_path
    )


def copy_repository(target: Path, *models: str) -> Path:
    """The kit's source and these models (code and config only, no weights) at ``target``."""
    target.mkdir(parents=True)
    shutil.copy(KIT_SOURCE, target / KIT_SOURCE.name)
    for model in models:
        shutil.copytree(
            MODEL_REPOSITORY / model,
            target / model,
            ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.json", ".fetched"),
        )
    return target


async def infer_frame_stats(client: grpcclient.InferenceServerClient, images: np.ndarray) -> np.ndarray:
    image = grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")
    image.set_data_from_numpy(images)
    result = await client.infer("frame_stats", [image], client_timeout=30)
    means = result.as_numpy("MEAN_RGB")
    assert means is not None
    return means


async def test_a_missing_parameter_fails_the_load_with_the_kits_message(
    tmp_path: Path, log_dir: Path
) -> None:
    repo = copy_repository(tmp_path / "repo", *MODELS)
    for model, name in REQUIRED_PARAMETER.items():
        config = repo / model / "config.pbtxt"
        config.write_text(drop_parameter(config.read_text(), name))
    log_path = log_dir / f"model-kit-triton-{tmp_path.name}.log"
    server = new_triton(repo, log_path, extra=["--load-model=frame_stats"])
    await server.start()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        # frame_stats imports its copy of the kit and runs: output types, error responses.
        images = np.random.default_rng(1).integers(0, 256, (2, 6, 5, 3), dtype=np.uint8)
        np.testing.assert_allclose(
            await infer_frame_stats(client, images), images.mean(axis=(1, 2)), rtol=1e-6
        )
        with pytest.raises(
            InferenceServerException, match=r"IMAGE must not be empty, got shape \[1, 0, 4, 3\]"
        ):
            await infer_frame_stats(client, np.zeros((1, 0, 4, 3), np.uint8))

        messages = {}
        for model, name in REQUIRED_PARAMETER.items():
            with pytest.raises(InferenceServerException) as caught:
                await client.load_model(model)
            match = MISSING.search(str(caught.value))
            assert match is not None, str(caught.value)
            assert (match["model"], match["name"]) == (model, name)
            # Raised by the copy in the model's version directory, where Triton imports it from.
            assert f"{repo / model / '1' / 'lva_model_kit.py'}" in str(caught.value)
            messages[model] = match[0]
        # The same message for every model but for the names in it.
        shapes = {
            text.replace(model, "MODEL").replace(REQUIRED_PARAMETER[model], "NAME")
            for model, text in messages.items()
        }
        assert len(shapes) == 1, shapes

        index = {
            entry["name"]: entry
            for entry in (await client.get_model_repository_index(as_json=True))["models"]
        }
        # The kit's source at the top of the repository is not taken for a model.
        assert set(index) == set(MODELS)
        assert index["frame_stats"]["state"] == "READY"
        for model in REQUIRED_PARAMETER:
            assert index[model]["state"] == "UNAVAILABLE"
            assert messages[model] in index[model]["reason"]
    finally:
        await client.close()
        await server.stop()
    log = log_path.read_text(errors="replace")
    for text in messages.values():
        # Triton's log quotes each message as a JSON string.
        assert text.replace('"', '\\"') in log


async def test_poll_mode_serves_a_copied_model_beside_the_kits_source(tmp_path: Path, log_dir: Path) -> None:
    # What an MLOps engineer does: copy model directories into a repository that Triton polls.
    repo = copy_repository(tmp_path / "repo", "frame_stats")
    log_path = log_dir / f"model-kit-poll-{tmp_path.name}.log"
    server = new_triton(repo, log_path, mode="poll", extra=["--repository-poll-secs=1"])
    await server.start()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        index = (await client.get_model_repository_index(as_json=True))["models"]
        assert [(entry["name"], entry["state"]) for entry in index] == [("frame_stats", "READY")]
        images = np.full((1, 2, 2, 3), 7, np.uint8)
        np.testing.assert_array_equal(await infer_frame_stats(client, images), [[7.0, 7.0, 7.0]])
    finally:
        await client.close()
        await server.stop()
    assert "lva_model_kit" not in log_path.read_text(errors="replace")
