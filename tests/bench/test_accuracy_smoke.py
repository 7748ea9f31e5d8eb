"""Smoke test of the accuracy benchmark: ``python -m benchmarks.accuracy --quick`` works end to end.

It runs as ``make accuracy QUICK=1`` does, against its own real Triton, and checks that the
results are complete: valid JSON, every model's figures numeric, a PNG beside it. It never
asserts an accuracy: a figure is a result, not a failure. Only a broken benchmark fails it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lva_testkit.paths import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_accuracy_writes_numeric_results(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.accuracy", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    [json_path] = tmp_path.glob("accuracy-*.json")
    results = json.loads(json_path.read_text())
    assert results["errors"] == []
    assert results["frames"] >= 10 and len(results["scenes"]) >= 2
    for model in ("person_detector", "person_detector_tiled"):
        figures = results["people_counter"][model]
        for key in ("recall", "precision", "count_mae", "cpu_ms_per_frame"):
            assert number(figures[key]), (model, key, figures[key])
        assert figures["people"] > 0
    faces = results["human_tracking"]["face_detector"]
    assert number(faces["recall"]) and number(faces["precision"]) and faces["faces"] > 0
    attributes = results["human_tracking"]["face_attributes"]
    assert number(attributes["gender_agreement"]) and attributes["gender_faces"] > 0
    assert json_path.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
