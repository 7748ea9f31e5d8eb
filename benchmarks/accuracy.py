"""Accuracy of the shipped models on labelled real photographs (``make accuracy``).

    .venv/bin/python -m benchmarks.accuracy [--quick] [--out benchmarks/results]

The frames and their hand-labelled truth come from ``benchmarks/accuracy_set.py`` (54 frames of
four scenes, made from photographs that ship in PyPI and Debian packages). A real Triton is started on the
shipped models, and every frame goes through the core's own client and batcher as the frame's
``Pixels``, so each model gets the frame format its config.pbtxt declares, as in the product:

- **people** (``people_counter``'s detector role: ``person_detector`` and
  ``person_detector_tiled``): recall and precision at IoU 0.5 (each truth matched to at most one
  detection, greedily by IoU), and count MAE per frame (|detections - people|). Detections on
  ignored people (mostly cut off by the frame, or tiny) count neither way;
- **faces** (``human_tracking``'s detector, ``face_detector``): recall and precision at IoU 0.4
  (hand-drawn face boxes and the detector's differ in where the forehead ends);
- **age and gender** (``face_attributes``, on the face detector's boxes that matched a labelled
  face, as the analytic does): gender agreement, and age error where the age is documented;
- **CPU per frame** of each model: user + system time of its Triton Python-backend process over
  the frames, divided by their number (the network's threads included).

``--quick`` uses every fourth frame. Figures never fail the run; it exits 1 only when a
measurement could not be taken at all. Writes ``accuracy-<time>.json`` and ``.png`` under
``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy_set import LabelledFrame, frames
from lva_core.inference.batcher import ModelBatcher
from lva_core.inference.client import TritonClient
from lva_core.pipeline.pixels import Pixels
from lva_core.runtime.triton_server import backend_stubs_of
from lva_testkit.triton import copy_models, local_triton
from tools.models import testdata

REPO = Path(__file__).resolve().parents[1]
PERSON_MODELS = ("person_detector", "person_detector_tiled")
FACE_MODEL, ATTRIBUTES_MODEL = "face_detector", "face_attributes"
PERSON_IOU, FACE_IOU = 0.5, 0.4
SCORE_THRESHOLD = 0.4  # people_counter's default score_threshold


def iou(a: Any, b: Any) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(found: list[Any], truths: list[Any], ignored: list[Any], threshold: float) -> dict[str, Any]:
    """Greedy one-to-one matching by IoU; detections on ignored boxes are set aside."""
    pairs = sorted(
        ((iou(d, t), i, j) for i, d in enumerate(found) for j, t in enumerate(truths)), reverse=True
    )
    by_detection: dict[int, int] = {}
    matched_truths: set[int] = set()
    for value, i, j in pairs:
        if value < threshold:
            break
        if i not in by_detection and j not in matched_truths:
            by_detection[i] = j
            matched_truths.add(j)
    unmatched = [i for i in range(len(found)) if i not in by_detection]
    set_aside = [i for i in unmatched if any(iou(found[i], g) >= threshold for g in ignored)]
    return {
        "tp": len(by_detection),
        "fp": len(unmatched) - len(set_aside),
        "truths": len(truths),
        "counted": len(found) - len(set_aside),
        "pairs": by_detection,
    }


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stub_of(server_pid: int, model: str) -> int | None:
    for pid in backend_stubs_of(server_pid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # Its second argument is the model.py it runs, inside the model's directory.
        if len(args) > 1 and f"/{model}/".encode() in args[1]:
            return pid
    return None


async def _detect(
    client: TritonClient, model: str, labelled: list[LabelledFrame], server_pid: int
) -> tuple[list[dict[str, np.ndarray]], float | None]:
    """Every frame through ``model`` (one request each, as a lone stream sends); CPU per frame."""
    batcher = ModelBatcher(client, model, max_batch=1)
    outputs = []
    try:
        # The first frame warms the model's session at this size; its CPU is not counted.
        await batcher.infer({"IMAGE": Pixels.of_rgb(labelled[0].image)}, timeout=120)
        stub = _stub_of(server_pid, model)
        before = _cpu_seconds(stub) if stub else None
        for frame in labelled:
            outputs.append(await batcher.infer({"IMAGE": Pixels.of_rgb(frame.image)}, timeout=120))
        cpu = (_cpu_seconds(stub) - before) / len(labelled) if stub and before is not None else None
        return outputs, cpu
    finally:
        await batcher.close()


def _valid(out: dict[str, np.ndarray]) -> list[list[float]]:
    count = int(np.asarray(out["COUNT"]).reshape(-1)[0])
    boxes = np.asarray(out["BOXES"])[:count]
    scores = np.asarray(out["SCORES"])[:count]
    return [b.tolist() for b, s in zip(boxes, scores, strict=True) if s >= SCORE_THRESHOLD]


def _people(
    labelled: list[LabelledFrame], outputs: list[dict[str, np.ndarray]], cpu: float | None
) -> dict[str, Any]:
    per_frame = []
    totals = {"tp": 0, "fp": 0, "truths": 0}
    errors = []
    by_scene: dict[str, dict[str, float]] = {}
    for frame, out in zip(labelled, outputs, strict=True):
        result = match(_valid(out), frame.people, frame.ignored_people, PERSON_IOU)
        for key in totals:
            totals[key] += result[key]
        error = abs(result["counted"] - result["truths"])
        errors.append(error)
        scene = by_scene.setdefault(frame.scene, {"tp": 0, "fp": 0, "truths": 0, "abs_error": 0, "frames": 0})
        for key in ("tp", "fp", "truths"):
            scene[key] += result[key]
        scene["abs_error"] += error
        scene["frames"] += 1
        per_frame.append(
            {
                "frame": frame.name,
                "people": result["truths"],
                "counted": result["counted"],
                "tp": result["tp"],
                "fp": result["fp"],
            }
        )
    scenes = {
        name: {
            "recall": _ratio(s["tp"], s["truths"]),
            "precision": _ratio(s["tp"], s["tp"] + s["fp"]),
            "count_mae": _ratio(s["abs_error"], s["frames"]),
            "people": s["truths"],
            "frames": s["frames"],
        }
        for name, s in by_scene.items()
    }
    return {
        "recall": _ratio(totals["tp"], totals["truths"]),
        "precision": _ratio(totals["tp"], totals["tp"] + totals["fp"]),
        "count_mae": round(float(np.mean(errors)), 4),
        "people": totals["truths"],
        "true_positives": totals["tp"],
        "false_positives": totals["fp"],
        "cpu_ms_per_frame": round(cpu * 1000, 2) if cpu is not None else None,
        "scenes": scenes,
        "per_frame": per_frame,
    }


async def _faces(
    client: TritonClient, labelled: list[LabelledFrame], server_pid: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    outputs, cpu = await _detect(client, FACE_MODEL, labelled, server_pid)
    totals = {"tp": 0, "fp": 0, "truths": 0}
    gender_right = gender_n = 0
    age_errors: list[float] = []
    batcher = ModelBatcher(client, ATTRIBUTES_MODEL, max_batch=1)
    try:
        for frame, out in zip(labelled, outputs, strict=True):
            found = _valid(out)
            result = match(found, [f.box for f in frame.faces], frame.ignored_faces, FACE_IOU)
            for key in totals:
                totals[key] += result[key]
            labelled_pairs = {
                i: frame.faces[j]
                for i, j in result["pairs"].items()
                if frame.faces[j].gender or frame.faces[j].age
            }
            if not labelled_pairs:
                continue
            # The detector's K rows, the unwanted ones zeroed, as human_tracking sends them.
            boxes = np.asarray(out["BOXES"], np.float32).copy()
            wanted = np.zeros(len(boxes), bool)
            wanted[list(labelled_pairs)] = True
            boxes[~wanted] = 0.0
            attributes = await batcher.infer(
                {"IMAGE": Pixels.of_rgb(frame.image), "BOXES": boxes}, timeout=120
            )
            ages = np.asarray(attributes["AGE"]).reshape(-1)
            males = np.asarray(attributes["GENDER"]).reshape(-1)
            for i, face in labelled_pairs.items():
                if face.gender:
                    gender_n += 1
                    gender_right += int(("m" if males[i] >= 0.5 else "f") == face.gender)
                if face.age is not None:
                    age_errors.append(abs(float(ages[i]) - face.age))
    finally:
        await batcher.close()
    faces = {
        "recall": _ratio(totals["tp"], totals["truths"]),
        "precision": _ratio(totals["tp"], totals["tp"] + totals["fp"]),
        "faces": totals["truths"],
        "true_positives": totals["tp"],
        "false_positives": totals["fp"],
        "cpu_ms_per_frame": round(cpu * 1000, 2) if cpu is not None else None,
    }
    attributes_result = {
        "gender_agreement": _ratio(gender_right, gender_n),
        "gender_faces": gender_n,
        "age_mae_years": round(float(np.mean(age_errors)), 2) if age_errors else None,
        "age_faces": len(age_errors),
    }
    return faces, attributes_result


def fetch(workdir: Path) -> Path:
    """A model repository of the measured models, weights in place, and the photographs of the
    frames in the cache (``make models``'s fetch)."""
    models = [*PERSON_MODELS, FACE_MODEL, ATTRIBUTES_MODEL]
    photographs = [file.name for file in testdata.FILES]
    fetched = subprocess.run(
        [sys.executable, str(REPO / "tools" / "fetch_models.py"), "--only", ",".join(models + photographs)],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if fetched.returncode != 0:
        raise RuntimeError(f"fetch_models failed:\n{fetched.stdout}\n{fetched.stderr}")
    return copy_models(workdir / "models", *models)


async def measure(labelled: list[LabelledFrame], repo: Path) -> dict[str, Any]:
    server = local_triton(repo, model_control_mode="none", startup_timeout=180)
    await server.start()
    client = TritonClient(server.grpc_url, shared_memory=True, pool_bytes=256 << 20, timeout=120)
    await client.start()
    try:
        assert server.pid is not None
        people = {}
        for model in PERSON_MODELS:
            outputs, cpu = await _detect(client, model, labelled, server.pid)
            people[model] = _people(labelled, outputs, cpu)
        faces, attributes = await _faces(client, labelled, server.pid)
    finally:
        await client.close()
        await server.stop()
    return {
        "people_counter": people,
        "human_tracking": {FACE_MODEL: faces, ATTRIBUTES_MODEL: attributes},
    }


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    people = results.get("people_counter") or {}
    names = list(people)
    if names:
        scenes = sorted({s for m in people.values() for s in m["scenes"]})
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            xs = np.arange(len(scenes) + 1) + k * width
            recall = [people[name]["scenes"][s]["recall"] or 0 for s in scenes] + [
                people[name]["recall"] or 0
            ]
            axes[0].bar(xs, recall, width, label=name)
            mae = [people[name]["scenes"][s]["count_mae"] or 0 for s in scenes] + [people[name]["count_mae"]]
            axes[1].bar(xs, mae, width, label=name)
        for ax, title in ((axes[0], "person recall at IoU 0.5"), (axes[1], "count MAE per frame (people)")):
            ax.set_xticks(np.arange(len(scenes) + 1) + 0.4 - width / 2, [*scenes, "all"])
            ax.set_title(title)
            ax.legend(fontsize=8)
        labels = []
        for k, name in enumerate(names):
            precision = people[name]["precision"] or 0
            cpu = people[name]["cpu_ms_per_frame"] or 0
            axes[2].bar(k, precision, 0.6)
            labels.append(f"{name}\n{cpu:.0f} ms CPU/frame")
        faces = (results.get("human_tracking") or {}).get(FACE_MODEL)
        if faces:
            axes[2].bar(len(names), faces["recall"] or 0, 0.6, color="grey")
            labels.append(f"{FACE_MODEL} recall\n{faces['cpu_ms_per_frame'] or 0:.0f} ms CPU/frame")
        axes[2].set_xticks(range(len(labels)), labels, fontsize=8)
        axes[2].set_ylim(0, 1)
        axes[2].set_title("person precision; face recall")
    else:
        for ax in axes:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
    fig.suptitle(f"accuracy, {results.get('frames', 0)} labelled frames ({results.get('started', '')})")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every fourth frame")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    started = datetime.now()
    stamp = started.strftime("%Y-%m-%dT%H%M%S")
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "method": __doc__,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "errors": [],
    }
    exit_code = 0
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO)
        results["commit"] = commit.stdout.strip() or None
        with tempfile.TemporaryDirectory(prefix="lva-accuracy-") as tmp:
            repo = fetch(Path(tmp))
            labelled = frames()
            if args.quick:
                labelled = labelled[::4]
            results["frames"] = len(labelled)
            results["scenes"] = sorted({f.scene for f in labelled})
            results["people"] = sum(len(f.people) for f in labelled)
            results["faces"] = sum(len(f.faces) for f in labelled)
            begun = time.monotonic()
            results.update(asyncio.run(measure(labelled, repo)))
            results["seconds"] = round(time.monotonic() - begun, 1)
    except Exception:
        results["errors"].append(traceback.format_exc())
        exit_code = 1
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"accuracy-{stamp}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, json_path.with_suffix(".png"))
    for model, figures in (results.get("people_counter") or {}).items():
        print(
            f"{model}: recall {figures['recall']}, precision {figures['precision']}, "
            f"count MAE {figures['count_mae']}, {figures['cpu_ms_per_frame']} ms CPU/frame"
        )
    tracking = results.get("human_tracking") or {}
    if tracking:
        print(f"{FACE_MODEL}: {tracking[FACE_MODEL]}")
        print(f"{ATTRIBUTES_MODEL}: {tracking[ATTRIBUTES_MODEL]}")
    for error in results["errors"]:
        print(error, file=sys.stderr)
    print(f"wrote {json_path} and {json_path.with_suffix('.png').name}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
