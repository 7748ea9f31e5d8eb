"""What a user would write instead of the agent: a plain Python loop per camera.

    python -m benchmarks.plain_loop --status FILE [--every 5] URL [URL ...]

A thread per camera: PyAV decodes the RTSP stream, every ``--every``-th frame becomes an RGB
array (``frame.to_ndarray(format="rgb24")``, as PyAV's documentation shows) and goes through the
person detector's own network (``triton_models/person_detector/1/ssdlite.onnx``) in ONNX Runtime,
in this process, on one shared session, one frame at a time (no batching), and the people in it
are counted as the product's detector counts them (score >= 0.4, the person class). That is
:func:`camera` and the few lines of :func:`main` that start it: about forty lines, the loop the
benchmarks compare the product with (``benchmarks/compare.py``, ``vs_plain_loop``).

The rest is measurement, kept out of the loop's way: each camera's counters (frames decoded,
frames analysed, and the age of the last analysed frame, from its decoding to the end of its
analysis: the core's ``frame_age``) are written to ``--status`` as JSON every 0.25 s, in the
shape of the core's stream statistics, so that one verdict judges both.

ONNX Runtime comes from the Triton environment (``.venv-triton``, ``requirements/triton.txt``)
when the interpreter running this has none: the project's own environment has PyAV but no ONNX
Runtime, the Triton environment the opposite. Its directory is appended to ``sys.path``, after
the project's own, so numpy and everything else stay the project's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "triton_models" / "person_detector" / "1" / "ssdlite.onnx"
OUTPUTS = ["boxes", "scores", "classes", "num_detections"]
PERSON, THRESHOLD = 1, 0.4  # the graph's class id of a person; model.py's score_threshold


@dataclass
class Stats:
    """One camera's counters, named as the core's stream statistics."""

    status: str = "connecting"
    frames_decoded: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    frame_age: float = 0.0
    people: int = 0
    error: str = ""


# ---- the plain loop ---------------------------------------------------------------------------


def camera(url: str, session: Any, every: int, stats: Stats) -> None:
    """Decode one camera, analyse every ``every``-th frame: what a user writes in a few lines."""
    try:
        with av.open(url, options={"rtsp_transport": "tcp"}) as container:
            stats.status = "in_progress"
            for index, frame in enumerate(container.decode(video=0)):
                decoded_at = time.monotonic()
                stats.frames_decoded += 1
                if index % every:
                    continue
                image = frame.to_ndarray(format="rgb24")
                _, scores, classes, count = session.run(OUTPUTS, {"image": image[np.newaxis]})
                rows = slice(0, int(count[0]))
                people = (scores[0, rows] >= THRESHOLD) & (classes[0, rows] == PERSON)
                stats.people = int(people.sum())
                stats.frames_processed += 1
                stats.frame_age = time.monotonic() - decoded_at
        stats.status = "done"
    except Exception as exc:  # a camera that fails says so; the others go on
        stats.status, stats.error = "failure", f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--every", type=int, default=5, help="analyse every N-th frame")
    parser.add_argument("--status", type=Path, required=True, help="where the counters are written")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between two cameras' starts")
    args = parser.parse_args(argv)
    onnxruntime = import_onnxruntime()
    session = onnxruntime.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    stats = [Stats() for _ in args.urls]
    for url, counters in zip(args.urls, stats, strict=True):
        threading.Thread(target=camera, args=(url, session, args.every, counters), daemon=True).start()
        time.sleep(args.gap)  # cameras come online one after another, as the core's do here
    runtime = {"version": onnxruntime.__version__, "path": str(Path(onnxruntime.__file__).parent)}
    report(args.status, stats, {"onnxruntime": runtime})
    return 0


# ---- measurement ------------------------------------------------------------------------------


def report(path: Path, stats: list[Stats], about: dict[str, Any]) -> None:
    """Write the counters every 0.25 s, whole (through a temporary name), until killed."""
    tmp = path.with_name(path.name + ".tmp")
    while True:
        body = {**about, "pid": os.getpid(), "time": time.monotonic(), "cameras": [asdict(s) for s in stats]}
        tmp.write_text(json.dumps(body))
        tmp.replace(path)
        time.sleep(0.25)


def import_onnxruntime() -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        triton_env = sorted((REPO / ".venv-triton").glob("lib/python*/site-packages"))
        if not triton_env:
            raise
        sys.path.append(str(triton_env[-1]))
        return importlib.import_module("onnxruntime")


if __name__ == "__main__":
    sys.exit(main())
