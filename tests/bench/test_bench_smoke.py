"""Smoke test of the benchmark suite: ``python -m benchmarks.run --quick`` works end to end.

It runs the quick suite as ``make bench QUICK=1`` does, against its own real Triton, core and
facade, and checks that the results are complete: valid JSON with every section and its
figures numeric, and a PNG beside it. It never asserts a speed: a slow machine gives slow
figures, and that is a result, not a failure. Only a broken suite fails it.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lva_testkit.paths import REPO
from lva_testkit.rtsp_server import available as rtsp_available

# The quick suite runs once per module, inside whichever test asks for it first: every test gets
# room for it on top of the subprocess's own 480 s limit (about 4 minutes here, its fleet
# section one of them).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def numbers(node: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert number(node.get(key)), f"{key} is not a number: {node.get(key)!r}"


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert run.returncode == 0, f"the suite failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return out


@pytest.fixture(scope="module")
def results(results_dir: Path) -> dict[str, Any]:
    stamped = [p for p in results_dir.glob("*.json") if p.name != "latest.json"]
    assert len(stamped) == 1, stamped
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{6}\.json", stamped[0].name), stamped[0].name
    data: dict[str, Any] = json.loads(stamped[0].read_text())
    assert json.loads((results_dir / "latest.json").read_text()) == data
    return data


def test_the_plot_is_a_png_beside_the_json(results_dir: Path, results: dict[str, Any]) -> None:
    stamped = [p for p in results_dir.glob("*.png") if p.name != "latest.png"]
    assert len(stamped) == 1
    for path in (stamped[0], results_dir / "latest.png"):
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000


def test_run_metadata(results: dict[str, Any]) -> None:
    assert results["mode"] == "quick" and results["errors"] == {}
    machine = results["machine"]
    assert number(machine["cpu_count"]) and machine["python"].count(".") == 2
    assert machine["packages"]["av"] and machine["triton_server"]
    assert number(results["duration_s"])


def test_model_only(results: dict[str, Any]) -> None:
    runs = results["model_only"]["runs"]
    assert {r["model"] for r in runs} == {"frame_stats", "person_detector"}
    for run in runs:
        numbers(run, "items_per_s", "batch", "requests")
        numbers(run["triton"], "mean_batch", "compute_infer_ms_per_item")


def test_pipeline_efficiency_and_batching(results: dict[str, Any]) -> None:
    section = results["pipeline_efficiency"]
    assert section["target"] == 0.9
    assert [r["streams"] for r in section["runs"]] == [1, 4, 16]
    for run in section["runs"]:
        numbers(run, "baseline_fps", "core_fps", "core_with_delivery_fps", "efficiency")
        numbers(run, "efficiency_with_delivery", "efficiency_ceiling_model_only", "efficiency_ceiling_cpu")
        numbers(run["batching"], "mean_batch", "max_batch", "efficiency")
        numbers(run["cpu_ms_per_frame"], "bare_decode", "core", "triton", "facade")
        latency = run["latency_saturated_ms"]
        numbers(latency, "model_compute_ms", "added_p50", "added_p99")
        numbers(latency["total"], "p50", "p99")
        for repeat in run["repeats"]:
            clip_frames = section["clip"]["frames"]
            # Every frame of every stream went through the pipeline and, delivered, out again.
            assert repeat["baseline"]["frames"] == repeat["core"]["frames"] == clip_frames * run["streams"]
            assert repeat["core_with_delivery"]["events_received"] == clip_frames * run["streams"]


def test_latency_and_time_to_first_event(results: dict[str, Any]) -> None:
    sources = ["file", "rtsp"] if rtsp_available() else ["file"]
    for source in sources:
        for variant in ("after_create_s", "after_resume_s"):
            numbers(results["time_to_first_event"][source][variant], "p50", "min", "max")
    if not rtsp_available():
        assert "skipped" in results["latency_live"]
        return
    for run in results["latency_live"]["runs"]:
        numbers(run, "added_p50", "added_p99", "model_compute_ms")
        assert run["total"]["n"] > 0


def test_capacity(results: dict[str, Any]) -> None:
    section = results["capacity"]
    if not rtsp_available():
        assert "skipped" in section
        return
    numbers(section, "capacity", "age_limit_s")
    assert section["steps"] and isinstance(section["lower_bound_only"], bool)
    for step in section["steps"]:
        numbers(step, "streams", "decode_fps_min", "analysed_fps_min")
        numbers(step["frame_age_s"], "p99")
        assert isinstance(step["pass"], bool)


def test_efficiency_on_the_realistic_clip(results: dict[str, Any]) -> None:
    section = results["efficiency_real"]
    assert section["target"] == 0.85 and section["frame_format"]
    clip = section["clip"]
    # The realistic clip's bit rate is measured from its packets and recorded (never asserted).
    numbers(clip, "video_kbps", "container_kbps", "target_kbps", "frames")
    assert (clip["width"], clip["height"], clip["fps"]) == (1280, 720, 25.0)
    assert [r["streams"] for r in section["runs"]] == [1, 2]
    for run in section["runs"]:
        numbers(run, "efficiency", "agent_overhead_ms", "decode_ms_per_frame", "model_ms_per_frame")
        numbers(run, "stack_ms_per_frame", "core_ms_per_frame", "triton_ms_per_frame", "model_batch")
        for repeat in run["repeats"]:
            # Every frame of every stream decoded by the baseline and analysed by the detector.
            frames = clip["frames"] * run["streams"]
            assert repeat["baseline"]["frames"] == repeat["stack"]["frames"] == frames
            numbers(repeat["model_alone"], "cpu_ms_per_item", "items")


def test_capacity_against_the_limit_and_a_plain_loop(results: dict[str, Any]) -> None:
    if not rtsp_available():
        assert "skipped" in results["capacity_vs_limit"] and "skipped" in results["vs_plain_loop"]
        return
    limit = results["capacity_vs_limit"]
    numbers(limit, "capacity", "limit_cameras", "ratio", "cores")
    numbers(limit["decode"], "cpu_ms_per_frame", "ms_per_camera_second")
    numbers(limit["model_alone"], "cpu_ms_per_item", "ms_per_camera_second")
    assert limit["decode"]["every"] == 5 and limit["limit_cameras"] > 0
    plain = results["vs_plain_loop"]
    assert plain["product"]["capacity"] == limit["capacity"]
    numbers(plain["plain_loop"], "capacity")
    for step in [*limit["steps"], *plain["plain_loop"]["steps"]]:
        numbers(step, "streams", "decode_fps_min", "analysed_fps_min", "cpu_ms_per_analysed_frame")
        numbers(step["frame_age_s"], "p99")
        assert isinstance(step["pass"], bool)
    # The product / plain-loop ratio is undefined only when the plain loop kept up with nothing.
    assert number(plain["ratio"]) or plain["plain_loop"]["capacity"] == 0
    numbers(plain["cpu_ms_per_analysed_frame"], "cameras", "product", "plain_loop")


def test_leaks(results: dict[str, Any]) -> None:
    cycles = results["leaks"]["cycles"]
    assert cycles["cycles"] == 100 and cycles["series_kib"][-1]["cycle"] == 100
    for point in cycles["series_kib"]:
        numbers(point, "core", "facade", "triton")
    for name in ("core", "facade"):
        numbers(cycles["growth"][name], "start_mib", "end_mib", "growth_mib")
    soak = results["leaks"]["soak"]
    if not rtsp_available():
        assert "skipped" in soak
        return
    assert len(soak["series_kib"]) >= 2
    for name in ("core", "facade"):
        numbers(soak["growth"][name], "start_mib", "end_mib", "growth_mib")


def test_summary_has_the_headline_figures(results: dict[str, Any]) -> None:
    summary = results["summary"]
    for key in ("efficiency", "efficiency_with_delivery", "efficiency_ceiling_cpu", "batching_efficiency"):
        assert set(summary[key]) == {"1", "4", "16"} and all(number(v) for v in summary[key].values())
    assert number(summary["time_to_first_event_s"]["file"])
    for key in ("efficiency_real", "agent_overhead_ms"):
        assert set(summary[key]) == {"1", "2"} and all(number(v) for v in summary[key].values())
    assert number(summary["real_clip_kbps"])
    if rtsp_available():
        assert number(summary["capacity_streams"]) and number(summary["time_to_first_event_s"]["rtsp"])
        numbers(summary["capacity_vs_limit"], "capacity", "limit_cameras", "ratio")
        numbers(summary["vs_plain_loop"], "product", "plain_loop")


def test_fleet(results: dict[str, Any]) -> None:
    fleet = results["fleet"]
    summary = fleet["summary"]
    # Never two readers of a camera, no stream left behind: the fleet's invariants, also here.
    assert summary["double_reads"] == 0 and summary["lost_streams"] == 0, fleet["failover"]
    for kind in ("sigkill_running_s", "sigterm_running_s"):
        numbers(summary[kind], "p50", "p99", "max")
    assert isinstance(summary["sigkill_target_met"], bool) and isinstance(summary["sigterm_target_met"], bool)
    numbers(summary["throughput_fps"], "1_agent", "2_agents", "ratio")
    numbers(summary["statements_per_s_per_agent"], "failover", "default")
    assert summary["statements_per_s_per_agent"]["default"] > 0
