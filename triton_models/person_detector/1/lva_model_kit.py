"""lva_model_kit: what the Python-backend models of this repository share, written once.

* ``parameter``: one parameter of ``config.pbtxt``, cast; a missing required one (or a value the
  cast refuses) fails the model's load with one clear ``ModelConfigError`` that names the model,
  the parameter and ``config.pbtxt``, whichever model it is.
* ``select_providers`` and ``session``: ONNX Runtime on the CUDA execution provider of the
  instance's device when the instance is a GPU instance and the provider exists, else the CPU.
* ``group_by_shape``: the requests of one ``execute`` call that can run as one batch.
* ``model_file``, ``output_dtypes``, ``error_response``: small things every model.py repeated.

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
    args: Mapping[str, str], filename: str, intra_op_threads: int = 0
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session of ``filename`` (in the version directory) on ``select_providers``.

    ``intra_op_threads`` 0 lets ONNX Runtime use every core; with several instances per device,
    set it lower. Graph optimisation is ONNX Runtime's full level (its default).
    """
    import onnxruntime

    path = model_file(args, filename)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(path, options, providers=select_providers(args))


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
