"""tools/gpu_check.sh, run for real on a tiny clip: the JSON it writes, with or without a GPU.

On a machine without a CUDA device (this one) the check must still do its job: exit 0, say why
there is no NVDEC (the core's own probe, device_problem()), skip the NVDEC runs and the stack
with that reason, and give numeric software figures for 1, 4 and 16 streams. Where there is a
device, the NVDEC runs must be there instead. ``--no-stack`` keeps Triton and the core out of it
either way, so it stays a unit test (a few seconds).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from lva_core.pipeline.source.hwaccel import device_problem
from lva_testkit.paths import REPO

FRAMES = 10
STREAMS = ("1", "4", "16")


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpu-check") / "tiny.mp4"
    rng = np.random.default_rng(14)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(FRAMES):
            image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def results(tiny_clip: Path) -> dict[str, Any]:
    out = tiny_clip.with_name("gpu.json")
    run = subprocess.run(
        [
            str(REPO / "tools" / "gpu_check.sh"),
            "--quick",
            "--no-stack",
            "--clip",
            str(tiny_clip),
            "--out",
            str(out),
        ],
        cwd=tiny_clip.parent,  # the script finds the repository itself
        env={**os.environ, "GPU_CHECK_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"the check failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    assert run.stdout.strip().splitlines()[-1] == str(out)
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_the_json_has_every_section(results: dict[str, Any]) -> None:
    assert results["schema"] == 1 and results["mode"] == "quick"
    assert {"machine", "nvidia_smi", "cuda", "clip", "decode", "stack", "summary", "errors"} <= set(results)
    assert results["errors"] == {}
    assert results["clip"]["frames"] == FRAMES and results["clip"]["width"] == 64
    assert isinstance(results["nvidia_smi"]["available"], bool)
    assert number(results["duration_s"])


def test_cuda_is_judged_as_the_core_judges_it(results: dict[str, Any]) -> None:
    problem = device_problem()
    cuda = results["cuda"]
    assert cuda["available"] is (problem is None)
    assert cuda["reason"] == problem
    assert results["summary"]["cuda_available"] is cuda["available"]


def check_runs(runs: list[dict[str, Any]], hardware: bool) -> None:
    assert [str(r["streams"]) for r in runs] == list(STREAMS)
    for run in runs:
        assert run["errors"] == []
        assert run["frames"] == FRAMES * run["streams"] == sum(run["per_stream_frames"])
        for key in ("seconds", "fps", "fps_per_stream", "cpu_seconds", "cpu_ms_per_frame", "open_s_max"):
            assert number(run[key]), f"{key}: {run[key]!r}"
        assert run["fps"] > 0 and run["cpu_ms_per_frame"] > 0
        assert (run["hw_decoded_streams"] == run["streams"]) is hardware


def test_software_figures_are_numeric(results: dict[str, Any]) -> None:
    software = results["decode"]["software"]
    check_runs(software["decode"], hardware=False)
    check_runs(software["decode_rgb"], hardware=False)
    assert all(r["frame_formats"] == ["yuv420p"] for r in software["decode"] + software["decode_rgb"])
    summary = results["summary"]
    for key in ("decode_fps", "decode_cpu_ms_per_frame", "decode_rgb_fps", "decode_rgb_cpu_ms_per_frame"):
        assert set(summary[key]["software"]) == set(STREAMS)
        assert all(number(v) for v in summary[key]["software"].values())


def test_nvdec_runs_with_a_gpu_and_is_skipped_with_the_reason_without(results: dict[str, Any]) -> None:
    """One test, two machines: where the core can open a CUDA device the NVDEC runs are there;
    elsewhere (CI, this machine) they are recorded as skipped with the core's own reason."""
    problem = device_problem()
    if problem is None:
        nvdec = results["decode"]["nvdec"]
        check_runs(nvdec["decode"], hardware=True)
        check_runs(nvdec["decode_rgb"], hardware=True)
        assert set(results["decode"]["nvdec_vs_software"]["decode"]) == set(STREAMS)
        assert results["stack"] == {"skipped": "not asked for (--no-stack)"}
        return
    assert problem, "a reason, e.g. PyAV's PermissionError where there is no GPU"
    assert results["decode"]["nvdec"] == {"skipped": f"no CUDA device: {problem}"}
    assert results["stack"] == {"skipped": f"no CUDA device: {problem}"}
    summary = results["summary"]
    assert summary["decode_fps"]["nvdec"] is None and summary["capacity"] == {"software": None, "nvdec": None}
    assert summary["streams_per_gpu"] is None
