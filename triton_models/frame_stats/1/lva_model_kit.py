"""lva_model_kit: what the Python-backend models of this repository share, written once.

* ``parameter``: one parameter of ``config.pbtxt``, cast; a missing required one (or a value the
  cast refuses) fails the model's load with one clear ``ModelConfigError`` that names the model,
  the parameter and ``config.pbtxt``, whichever model it is.
* ``select_providers`` and ``session``: ONNX Runtime on the CUDA execution provider of the
  instance's device when the instance is a GPU instance and the provider exists, else the CPU.
* ``group_by_shape``: the requests of one ``execute`` call that can run as one batch.
* ``model_file``, ``output_dtypes``, ``error_response``: small things every model.py repeated.
* ``frame_format``, ``i420_size`` and ``rgb_from_i420``: the frame format a model declares in
  config.pbtxt (``rgb``, the default, or ``i420``: the decoder's yuv420p planes), and the
  conversion of an I420 batch to RGB, at its own size or resampled to the network's, in numpy.

Where it lives: ``triton_models/lva_model_kit.py`` is the source, and each model version directory
that uses it holds a byte-identical copy next to its ``model.py``. Triton's Python backend puts
the version directory (and the model directory) on ``sys.path`` before it imports ``model.py``, so
``import lva_model_kit`` finds the copy, and a model directory copied anywhere, NVIDIA's Triton
container included, works as it is, each version with the kit it was written against. Edit the
source, never a copy, then run ``python tools/sync_model_kit.py``;
``tests/models/test_triton_model_kit.py`` fails while a copy differs.

Only numpy and the stub's ``triton_python_backend_utils`` are imported here: ONNX Runtime is
imported by the functions that use it, so a model without a network (frame_stats) does not need it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

import numpy as np
import triton_python_backend_utils as pb_utils

if TYPE_CHECKING:
    import onnxruntime

T = TypeVar("T")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ModelConfigError(ValueError):
    """config.pbtxt lacks a parameter that model.py requires, or gives one a value it cannot use."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


# The default of ``parameter``: no default, the parameter must be in config.pbtxt.
REQUIRED: Any = _Required()


@overload
def parameter(config: Mapping[str, Any], name: str) -> str: ...
@overload
def parameter(config: Mapping[str, Any], name: str, cast: Callable[[str], T]) -> T: ...
@overload
def parameter(config: Mapping[str, Any], name: str, cast: Callable[[str], T], default: T) -> T: ...
def parameter(
    config: Mapping[str, Any], name: str, cast: Callable[[str], Any] = str, default: Any = REQUIRED
) -> Any:
    """``cast`` of the ``string_value`` of parameter ``name`` in ``config`` (the model config JSON).

    Absent: ``default`` as it is, or, when there is none, ``ModelConfigError``. A value that
    ``cast`` rejects with ``ValueError`` or ``TypeError`` is a ``ModelConfigError`` as well.
    """
    model = config.get("name", "?")
    entry = (config.get("parameters") or {}).get(name)
    if entry is None:
        if default is not REQUIRED:
            return default
        raise ModelConfigError(
            f"{model}: config.pbtxt lacks the parameter {name!r}, which model.py requires; add "
            f'parameters {{ key: "{name}" value: {{ string_value: "..." }} }} to {model}/config.pbtxt'
        )
    text = str(entry.get("string_value", ""))
    try:
        return cast(text)
    except (TypeError, ValueError) as exc:
        raise ModelConfigError(
            f"{model}: the parameter {name!r} in config.pbtxt is {text!r}, which model.py cannot use: {exc}"
        ) from exc


def select_providers(
    args: Mapping[str, str], available: Iterable[str] | None = None
) -> list[str | tuple[str, dict[str, Any]]]:
    """ONNX Runtime's execution providers for the instance that ``initialize(args)`` sets up.

    CUDA on the instance's device, then the CPU, when the instance is a GPU instance and ONNX
    Runtime has the CUDA provider (``available``: ``onnxruntime.get_available_providers()``);
    only the CPU otherwise. Triton makes an instance KIND_GPU when the config names no kind and
    there is a GPU, so that is "CUDA when present"; an explicit KIND_CPU is respected. The kind is
    checked as well because onnxruntime-gpu lists the CUDA provider even where there is no GPU.
    """
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    if args.get("model_instance_kind") == "GPU" and CUDA in set(available):
        device = int(args.get("model_instance_device_id", "0"))
        return [(CUDA, {"device_id": device}), CPU]
    return [CPU]


def model_file(args: Mapping[str, str], filename: str) -> str:
    """The path of ``filename`` in the model's version directory; it must exist."""
    path = os.path.join(args["model_repository"], args["model_version"], filename)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run `make models`")
    return path


def session(
    args: Mapping[str, str], filename: str, intra_op_threads: int = 0, spinning: bool = False
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session of ``filename`` (in the version directory) on ``select_providers``.

    ``intra_op_threads`` 0 lets ONNX Runtime use every core; with several instances per device,
    set it lower. Graph optimisation is ONNX Runtime's full level (its default).

    ``spinning`` False: the intra-op worker threads sleep between runs instead of busy-waiting
    for the next one (ONNX Runtime's default is to spin). Requests come at camera rate, not back
    to back, so spinning burns cores the decoders need: SSDLite at 300x300 on two cores cost
    90-106 ms of CPU per run with 50-200 ms between runs when spinning, 41 ms without, for
    +4-9 ms of latency (measured in the Triton environment's ONNX Runtime).
    """
    import onnxruntime

    path = model_file(args, filename)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return onnxruntime.InferenceSession(path, options, providers=select_providers(args))


def intra_op_threads(config: Mapping[str, Any], cores: int | None = None) -> int:
    """ONNX Runtime threads per instance: the ``intra_op_threads`` parameter, or when it is 0 or
    absent, this machine's cores shared among the model's CPU instances (at least one each).

    ``count`` instances, each spreading one run over every core, fight for the cores whenever two
    runs overlap; each taking its share runs them side by side. On the 2-core development VM,
    two instances of one thread each carried 6 cameras of person detection where one instance
    of two threads carried 5 (benchmarks/README.md, "capacity_vs_limit").
    """
    threads = parameter(config, "intra_op_threads", int, 0)
    if threads > 0:
        return threads
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    groups = config.get("instance_group") or [{}]
    count = sum(int(group.get("count", 1) or 1) for group in groups)
    return max(1, cores // max(1, count))


def output_dtypes(config: Mapping[str, Any], names: Iterable[str]) -> dict[str, type[np.generic]]:
    """The numpy type of each output in ``names``, from config.pbtxt, so that the two cannot drift."""
    return {
        name: pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(config, name)["data_type"])
        for name in names
    }


def error_response(message: str) -> Any:
    """A response that fails its own request with ``message`` (the others of the call go on)."""
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


@dataclass(frozen=True)
class ShapeGroup:
    """Requests whose arrays agree in every dimension but the first, as one batch."""

    # Indices of the requests, in request order.
    members: tuple[int, ...]
    # Their arrays concatenated along the first axis (the array itself for one member: no copy).
    batch: np.ndarray
    # How many rows of ``batch`` each member owns.
    rows: tuple[int, ...]

    def split(self, outputs: Mapping[str, np.ndarray]) -> list[tuple[int, dict[str, np.ndarray]]]:
        """(request index, its rows of every output) for each member, in request order.

        ``outputs`` hold one row per row of ``batch``; each member gets views of its rows.
        """
        parts = []
        start = 0
        for index, count in zip(self.members, self.rows, strict=True):
            stop = start + count
            parts.append((index, {name: value[start:stop] for name, value in outputs.items()}))
            start = stop
        return parts


def group_by_shape(arrays: Sequence[np.ndarray | None]) -> list[ShapeGroup]:
    """Group one array per request (``None``: the request is answered already) by ``shape[1:]``.

    The dynamic batcher only merges requests of equal shapes, so there is usually one group; a
    client that bypasses it may mix shapes, and a batch must be rectangular. Groups come in the
    order in which their shape first appears; members keep request order.
    """
    by_shape: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
    for index, array in enumerate(arrays):
        if array is not None:
            by_shape.setdefault(tuple(array.shape[1:]), []).append((index, array))
    groups = []
    for members in by_shape.values():
        parts = [array for _, array in members]
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
        groups.append(
            ShapeGroup(tuple(index for index, _ in members), batch, tuple(part.shape[0] for part in parts))
        )
    return groups


# --- frame formats -------------------------------------------------------------------------------

RGB = "rgb"
I420 = "i420"
FRAME_FORMATS = (RGB, I420)


def frame_format(config: Mapping[str, Any]) -> str:
    """The frame format that ``config`` (the model config JSON) declares: ``rgb`` or ``i420``.

    Read from the parameter ``frame_format``; ``rgb`` (IMAGE uint8 ``[N, H, W, 3]``, the detector
    contract's original input) when it is absent. ``i420`` is IMAGE uint8 ``[N, H*3/2, W]``: per
    item the Y plane (H rows of W bytes), then U and V (H/2 x W/2 bytes each, contiguous), BT.601
    limited range, W and H even (see ``rgb_from_i420``). Any other value, or an IMAGE input
    whose dims in config.pbtxt do not fit the format (``[-1, -1, 3]`` for rgb, ``[-1, -1]`` for
    i420), is a ``ModelConfigError``: the model would otherwise load and fail every request.
    """
    model = config.get("name", "?")
    # As leniently as the core reads it (lva_core/inference/frame_format.py): case and
    # surrounding blanks do not matter, and an empty value is the default.
    value = parameter(config, "frame_format", str, RGB).strip().lower() or RGB
    if value not in FRAME_FORMATS:
        raise ModelConfigError(
            f"{model}: the parameter 'frame_format' in config.pbtxt is {value!r}, which model.py cannot "
            f"use: it must be one of {', '.join(FRAME_FORMATS)}"
        )
    for tensor in config.get("input") or []:
        if tensor.get("name") != "IMAGE":
            continue
        dims = [int(d) for d in tensor.get("dims", [])]
        # Without batching (max_batch_size 0) the dims include the batch dimension.
        item = dims if int(config.get("max_batch_size", 0) or 0) > 0 else dims[1:]
        fits = len(item) == 2 if value == I420 else len(item) == 3 and item[2] in (3, -1)
        if not fits:
            wanted = "[ -1, -1 ]" if value == I420 else "[ -1, -1, 3 ]"
            raise ModelConfigError(
                f"{model}: frame_format {value!r} needs the IMAGE dims {wanted} in config.pbtxt, "
                f"which declares {dims}"
            )
    return value


def i420_size(shape: Sequence[int]) -> tuple[int, int]:
    """(W, H) of the frames of an I420 batch of ``shape`` ``[N, H*3/2, W]``; ``ValueError`` if none.

    H*3/2 rows of W bytes hold the Y plane (H x W) and the U and V planes (H/2 x W/2 each), so
    the rows must be a multiple of 3 (which makes H even), and W even; neither may be zero.
    """
    if len(shape) != 3:
        raise ValueError(f"an I420 IMAGE must be [N, H*3/2, W], got shape {list(shape)}")
    rows, width = int(shape[1]), int(shape[2])
    height = rows * 2 // 3
    if rows == 0 or width == 0 or rows % 3 != 0 or width % 2 != 0:
        raise ValueError(
            f"an I420 IMAGE must be [N, H*3/2, W] with W and H even and not zero, got shape {list(shape)}"
        )
    return width, height


# BT.601 limited range to RGB the way swscale computes it for untagged video (its default), in
# the fixed point of its x86 converter (libswscale/yuv2rgb.c, ff_yuv2rgb_c_init_tables, and
# x86/yuv_2_rgb.asm): each term is ((sample - offset) * coefficient) >> 13 with 13-bit
# coefficients (pmulhw of sample * 8 by them), floored separately and summed, then clamped to
# 0..255. Bit for bit the rgb24 of PyAV's reformat (FFmpeg 8) on x86; other converters of
# swscale may differ by 1 here and there. The coefficients come from swscale's ITU-R BT.601
# inverse table (16.16: crv, cbu, cgu, cgv) and 255/219 for the luma range, rounded to 13 bits
# as its roundToInt16 does: 9539, 13075, 16525, -3209, -6660.
_SWS_BT601 = (104597, 132201, 25675, 53279)


def _coefficient(value_16_16: int) -> int:
    return (value_16_16 * (1 << 13) + (1 << 15)) >> 16


_CY = _coefficient(((1 << 16) * 255) // 219)
_CRV, _CBU, _CGU, _CGV = (
    _coefficient(value) for value in (_SWS_BT601[0], _SWS_BT601[1], -_SWS_BT601[2], -_SWS_BT601[3])
)


# Pixels converted per step. Whole-frame int32 temporaries cost more in page faults than in
# arithmetic: glibc may serve blocks of 128 KiB or more by fresh mappings and unmap them on
# free, so each call faults their pages in again (measured: 90K pixels in one step, 1.9 ms of
# CPU and 363 page faults; the same in two steps, 0.5 ms and none). At 16K pixels the largest
# temporary, the int16 [16K, 3] sums, is 96 KiB: below that threshold, and warm in the cache.
_STEP_PIXELS = 1 << 14


def _term(samples: np.ndarray, coefficient: int, offset: int) -> np.ndarray:
    """((samples - offset) * coefficient) >> 13, int32, as swscale floors each term."""
    term = np.multiply(samples, coefficient, dtype=np.int32)
    term -= offset * coefficient
    term >>= 13
    return term


def _convert(y: np.ndarray, u: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    """RGB of Y, U and V samples into ``out`` (uint8 ``[*y.shape, 3]``); u, v broadcast to y."""
    luma = _term(y, _CY, 16)
    cb_blue, cb_green = _term(u, _CBU, 128), _term(u, _CGU, 128)
    cr_red, cr_green = _term(v, _CRV, 128), _term(v, _CGV, 128)
    cb_green += cr_green
    total = np.empty(out.shape, np.int16)
    for channel, chroma in enumerate((cr_red, cb_green, cb_blue)):
        np.add(luma, chroma, out=total[..., channel], casting="unsafe")
    np.clip(total, 0, 255, out=total)
    out[...] = total


@functools.lru_cache(maxsize=32)
def _nearest(width: int, height: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into the Y plane and into a chroma plane of each pixel of a w x h output.

    Nearest neighbour at pixel centres: output pixel (i, j) takes the source pixel under the
    point ((j + 0.5) W / w, (i + 0.5) H / h) and the chroma sample that covers that pixel.
    """
    rows = (np.arange(h, dtype=np.intp) * 2 + 1) * height // (2 * h)
    cols = (np.arange(w, dtype=np.intp) * 2 + 1) * width // (2 * w)
    luma = rows[:, None] * width + cols[None, :]
    chroma = (rows // 2)[:, None] * (width // 2) + (cols // 2)[None, :]
    luma.flags.writeable = chroma.flags.writeable = False
    return luma, chroma


def rgb_from_i420(batch: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 ``[N, h, w, 3]`` of an I420 batch, uint8 ``[N, H*3/2, W]`` (see ``frame_format``).

    BT.601 limited range (the matrix swscale uses by default for untagged video), with swscale's
    own fixed point and rounding: at full size each chroma sample serves its 2x2 luma pixels,
    and the result equals PyAV's ``frame.reformat(format="rgb24")`` of the same yuv420p frame
    (bit for bit on x86). ``size`` ``(w, h)`` resamples in the same step, by nearest neighbour
    at pixel centres: output pixel (i, j) takes the pixel of the frame under the point
    ((j + 0.5) W / w, (i + 0.5) H / h) and the chroma sample that covers it; no filtering (a
    detector's input, not a picture to look at), aspect not kept, larger or smaller. ``None``
    or ``(W, H)``: the frames' own size.

    Vectorised numpy, in steps of ``_STEP_PIXELS`` output pixels: gather the samples (resized),
    then a few int32/int16 operations per pixel. CPU time per 1280x720 frame, measured on the
    development machine (2 cores shared with other work) under the Triton environment's numpy
    1.26, batches of 1 and 8 alike: 1.0-1.4 ms to 300x300, 7-11 ms at full size. For scale,
    swscale (SIMD, one thread) takes 0.4 ms at full size and 1.3-1.9 ms to 300x300 bilinear.
    ``ValueError`` for a batch that is not uint8 I420 (``i420_size``) or a size below 1x1.
    """
    width, height = i420_size(batch.shape)
    if batch.dtype != np.uint8:
        raise ValueError(f"an I420 IMAGE must be uint8, got {batch.dtype}")
    w, h = (width, height) if size is None else (int(size[0]), int(size[1]))
    if w < 1 or h < 1:
        raise ValueError(f"size must be at least 1x1, got {size}")
    count, cw, ch = batch.shape[0], width // 2, height // 2
    flat = batch.reshape(count, -1)
    y_plane = flat[:, : width * height].reshape(count, height, width)
    u_plane = flat[:, width * height : width * height + cw * ch].reshape(count, ch, cw)
    v_plane = flat[:, width * height + cw * ch :].reshape(count, ch, cw)

    out = np.empty((count, h, w, 3), np.uint8)
    if (w, h) == (width, height):
        # Bands of chroma rows: each chroma sample serves two luma rows of two pixels, so U and
        # V are repeated along the row once and broadcast over the pair of rows.
        band = max(1, _STEP_PIXELS // (2 * width))
        pairs = out.reshape(count, ch, 2, width, 3)
        for item in range(count):
            for top in range(0, ch, band):
                rows = slice(top, min(top + band, ch))
                n = rows.stop - rows.start
                y = y_plane[item, 2 * rows.start : 2 * rows.stop].reshape(n, 2, width)
                u = np.repeat(u_plane[item, rows], 2, axis=1).reshape(n, 1, width)
                v = np.repeat(v_plane[item, rows], 2, axis=1).reshape(n, 1, width)
                _convert(y, u, v, pairs[item, rows])
        return out
    # Nearest neighbour: the samples of each band of output rows gathered, then converted.
    luma_index, chroma_index = _nearest(width, height, w, h)
    band = max(1, _STEP_PIXELS // w)
    for item in range(count):
        y_flat, u_flat, v_flat = y_plane[item].ravel(), u_plane[item].ravel(), v_plane[item].ravel()
        for top in range(0, h, band):
            rows = slice(top, min(top + band, h))
            luma, chroma = luma_index[rows], chroma_index[rows]
            _convert(np.take(y_flat, luma), np.take(u_flat, chroma), np.take(v_flat, chroma), out[item, rows])
    return out
