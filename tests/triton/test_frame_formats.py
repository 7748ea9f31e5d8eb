"""The core ships each frame in the format its model declares, through a real Triton.

One copy of the ``frame_echo`` test model per declaration (RGB at the frame's size, RGB scaled
to 300x300, RGB fitted in 640x480, the I420 planes); each answers the shape and the byte sum of
what reached it. The frames are the core's own: decoded by ``VideoSource`` from an H.264 clip,
sent through the core's batcher and client over shared memory, two streams' frames batched.
What is expected is computed apart, with PyAV: its ``to_ndarray`` for RGB and I420 (exact),
its swscale for the scaled ones (close: the core scales in two steps).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
import pytest

from lva_core.inference.batcher import ModelBatcher
from lva_core.inference.client import InferenceError, TritonClient
from lva_core.pipeline.frame import Frame
from lva_core.pipeline.pixels import FormatLearner
from lva_core.pipeline.source.reader import VideoSource
from lva_core.pipeline.source.spec import SourceSpec
from lva_core.runtime.triton_server import LocalTriton
from lva_testkit.clips import make_clip
from lva_testkit.paths import REPO
from lva_testkit.triton import local_triton

ECHO = REPO / "tests" / "fixtures" / "frame_echo"
RGB_PARAMETER = 'key: "frame_format"\n  value: { string_value: "rgb" }'
# name -> (the frame parameters, IMAGE dims)
DECLARATIONS = {
    "echo_rgb": ({}, "[ -1, -1, 3 ]"),
    "echo_rgb300": ({"frame_size": "300x300"}, "[ -1, -1, 3 ]"),
    "echo_fit": ({"frame_size": "640x480", "frame_resize": "fit"}, "[ -1, -1, 3 ]"),
    "echo_i420": ({"frame_format": "i420"}, "[ -1, -1 ]"),
    "echo_fixed_dims": ({"frame_size": "300x300"}, "[ 300, 300, 3 ]"),
    "echo_bad_format": ({"frame_format": "bgr"}, "[ -1, -1, 3 ]"),
    "echo_i420_rgb_dims": ({"frame_format": "i420"}, "[ -1, -1, 3 ]"),
}


def _declare(repo: Path, name: str, parameters: dict[str, str], dims: str) -> None:
    target = repo / name
    shutil.copytree(ECHO, target, ignore=shutil.ignore_patterns("__pycache__"))
    config = (target / "config.pbtxt").read_text()
    config = config.replace('name: "frame_echo"', f'name: "{name}"').replace("[ -1, -1, 3 ]", dims, 1)
    declared = "".join(
        f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
        for key, value in parameters.items()
        if key != "frame_format"
    )
    layout = parameters.get("frame_format", "rgb")
    config = config.replace(RGB_PARAMETER, f'key: "frame_format"\n  value: {{ string_value: "{layout}" }}')
    (target / "config.pbtxt").write_text(config + declared)


@pytest.fixture(scope="module")
async def triton(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalTriton]:
    repo = tmp_path_factory.mktemp("formats") / "repo"
    repo.mkdir()
    for name, (parameters, dims) in DECLARATIONS.items():
        _declare(repo, name, parameters, dims)
    server = local_triton(repo, model_control_mode="none")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(triton: LocalTriton) -> AsyncIterator[TritonClient]:
    client = TritonClient(triton.grpc_url, shared_memory=True, pool_bytes=64 << 20, timeout=10)
    await client.start()
    yield client
    await client.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=1.0, size=(1280, 720))


def _frames(clip: Path, learner: FormatLearner, **spec: object) -> list[Frame]:
    source = VideoSource(
        SourceSpec(reference=str(clip), kind="videofile", rate_period=5, **spec), "s", learner
    )  # type: ignore[arg-type]
    with source:
        return list(source.frames())


def _pyav_frames(clip: Path) -> list[av.VideoFrame]:
    with av.open(str(clip)) as container:
        return list(container.decode(video=0))[::5]


async def _echo(client: TritonClient, model: str, frames: list[Frame]) -> list[tuple[tuple[int, ...], int]]:
    batcher = ModelBatcher(client, model, max_batch=8)
    try:
        # All at once, as two cameras' frames arrive together: they leave in shared batches.
        answers = await asyncio.gather(*(batcher.infer({"IMAGE": f.pixels}) for f in frames))
    finally:
        await batcher.close()
    # Two requests in flight at most (the batcher), so more frames than that share requests.
    assert len(frames) <= 2 or batcher.stats.batches < len(frames)
    return [(tuple(int(d) for d in a["SHAPE"] if d), int(a["SUM"][0])) for a in answers]


async def test_rgb_at_the_frames_size_is_pyav_s_rgb(client: TritonClient, clip: Path) -> None:
    frames = _frames(clip, FormatLearner())
    got = await _echo(client, "echo_rgb", frames)
    expected = [f.to_ndarray(format="rgb24") for f in _pyav_frames(clip)]
    assert len(got) == len(expected) == 5
    assert got == [((720, 1280, 3), int(e.sum(dtype=np.int64))) for e in expected]


async def test_i420_is_the_decoders_planes(client: TritonClient, clip: Path) -> None:
    frames = _frames(clip, FormatLearner())
    got = await _echo(client, "echo_i420", frames)
    expected = [f.to_ndarray(format="yuv420p") for f in _pyav_frames(clip)]
    assert got == [((1080, 1280), int(e.sum(dtype=np.int64))) for e in expected]


@pytest.mark.parametrize(("model", "size"), [("echo_rgb300", (300, 300)), ("echo_fit", (640, 360))])
async def test_scaled_rgb_is_the_declared_size(
    client: TritonClient, clip: Path, model: str, size: tuple[int, int]
) -> None:
    learner = FormatLearner()
    frames = _frames(clip, learner)
    got = await _echo(client, model, frames)
    width, height = size
    for (shape, total), frame in zip(got, _pyav_frames(clip), strict=True):
        assert shape == (height, width, 3)
        expected = frame.reformat(
            width=width, height=height, format="rgb24", interpolation="AREA"
        ).to_ndarray()
        # The same picture: the byte sum within 1 % of swscale's one-step scaling.
        assert abs(total - int(expected.sum(dtype=np.int64))) < 0.01 * expected.sum(dtype=np.int64)


async def test_the_decoding_thread_learns_the_format_and_makes_it_ahead(
    client: TritonClient, clip: Path
) -> None:
    """After the first frame asked, the stream's decoding thread makes the scaled RGB itself."""
    learner = FormatLearner()
    first = _frames(clip, learner)
    await _echo(client, "echo_rgb300", first[:1])
    ahead = _frames(clip, learner)
    assert all(len(f.pixels._made) == 1 for f in ahead), "made in the decoding thread, before any ask"
    assert not first[1].pixels._made  # frames read before the ask were not


async def test_fixed_dims_agreeing_with_frame_size_are_accepted(client: TritonClient, clip: Path) -> None:
    got = await _echo(client, "echo_fixed_dims", _frames(clip, FormatLearner())[:2])
    assert [shape for shape, _ in got] == [(300, 300, 3)] * 2


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            "echo_bad_format",
            "echo_bad_format/config.pbtxt: parameter frame_format is 'bgr'; expected rgb or i420",
        ),
        (
            "echo_i420_rgb_dims",
            "echo_i420_rgb_dims/config.pbtxt: input IMAGE has dims [-1, -1, 3]; frame_format i420 needs",
        ),
    ],
)
async def test_a_declaration_the_input_cannot_hold_is_refused_by_name(
    client: TritonClient, clip: Path, model: str, message: str
) -> None:
    batcher = ModelBatcher(client, model)
    try:
        with pytest.raises(InferenceError) as raised:
            await batcher.infer({"IMAGE": _frames(clip, FormatLearner())[0].pixels})
    finally:
        await batcher.close()
    assert raised.value.code == 47103
    assert message in raised.value.detail
