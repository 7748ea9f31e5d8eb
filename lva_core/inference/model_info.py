"""What the core knows about a model comes from Triton (metadata + config), never from constants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Triton datatype names -> numpy dtypes (the subset the model contracts use).
DTYPES: dict[str, np.dtype[Any]] = {
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BOOL": np.dtype(np.bool_),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    # Per-item dims, without the batch dimension when the model batches; -1 is variable.
    dims: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[Any]:
        return DTYPES[self.datatype]

    @property
    def fixed(self) -> bool:
        return all(d >= 0 for d in self.dims)

    def item_bytes(self) -> int:
        """Bytes of one item; only meaningful when ``fixed``."""
        return int(np.prod(self.dims, dtype=np.int64)) * self.dtype.itemsize


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    max_batch_size: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    # Contract parameters from config.pbtxt (``parameters { key: ... }``), as strings.
    parameters: dict[str, str] = field(default_factory=dict)

    @property
    def batches(self) -> bool:
        return self.max_batch_size > 0

    @property
    def contract(self) -> str:
        return self.parameters.get("contract", "")

    def input(self, name: str) -> TensorInfo:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorInfo:
        return next(t for t in self.outputs if t.name == name)


def _tensors(entries: list[dict[str, Any]], batches: bool) -> tuple[TensorInfo, ...]:
    tensors = []
    for entry in entries:
        dims = tuple(int(d) for d in entry.get("dims", entry.get("shape", [])))
        datatype = str(entry.get("data_type", entry.get("datatype", ""))).removeprefix("TYPE_")
        # The metadata's "shape" carries the batch dim (-1) first; the config's "dims" does not.
        if "shape" in entry and "dims" not in entry and batches:
            dims = dims[1:]
        datatype = {"FP32": "FP32", "STRING": "BYTES"}.get(datatype, datatype)
        tensors.append(TensorInfo(entry["name"], datatype, dims))
    return tuple(tensors)


def model_info_from_json(metadata: dict[str, Any], config: dict[str, Any]) -> ModelInfo:
    """Build from ``get_model_metadata(as_json=True)`` and ``get_model_config(as_json=True)``."""
    cfg = config.get("config", config)
    max_batch = int(cfg.get("max_batch_size", 0))
    params = {key: str(value.get("string_value", "")) for key, value in (cfg.get("parameters") or {}).items()}
    versions = metadata.get("versions") or [""]
    return ModelInfo(
        name=str(metadata.get("name", cfg.get("name", ""))),
        version=str(versions[-1]),
        max_batch_size=max_batch,
        inputs=_tensors(cfg.get("input", []), max_batch > 0),
        outputs=_tensors(cfg.get("output", []), max_batch > 0),
        parameters=params,
    )
