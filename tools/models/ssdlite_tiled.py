"""The tiled person detector's weights: the person detector's own ``ssdlite.onnx``, copied.

``person_detector_tiled`` runs the same SSDLite-MobileNetV2 network as ``person_detector``
over tiles (``triton_models/person_detector_tiled/1/model.py``). Its file is the same cache entry
(``tools/models/ssdlite.py``: same package, same recipe, so the same sha256 key): converted once
for both, copied into each model directory, and never committed.

Run ``python -m tools.models.ssdlite_tiled [model repository]`` to build just this model.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tools.models import common, ssdlite

PACKAGE = ssdlite.PACKAGE
RECIPE = ssdlite.RECIPE
MODEL = "person_detector_tiled"
ONNX_NAME = ssdlite.ONNX_NAME


def build(repo: Path) -> list[Path]:
    """Put ``ssdlite.onnx`` into ``<repo>/person_detector_tiled/1/``; return the files written."""
    return common.build_cached(
        "ssdlite", PACKAGE, RECIPE, [ONNX_NAME], ssdlite.convert, common.version_dir(repo, MODEL)
    )


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "triton_models"
    print("\n".join(str(path) for path in build(target)))
