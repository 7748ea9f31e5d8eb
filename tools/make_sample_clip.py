"""Build the sample clip (``make sample``): a command line over ``lva_testkit.clips.make_clip``.

    python tools/make_sample_clip.py var/sample.mp4 [--seconds 10] [--fps 25] [--size 1280x720]

The clip and its ``.truth.json`` are described in lva_testkit/clips.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Runnable as `python tools/make_sample_clip.py` from anywhere: the script's own folder is on
# sys.path, not the repository root, where lva_testkit lives (it is not installed).
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lva_testkit.clips import make_clip, truth_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    parser.add_argument("--keyint", type=int, default=None, help="keyframe interval in frames (default: fps)")
    parser.add_argument("--if-missing", action="store_true", help="do nothing if the clip exists")
    args = parser.parse_args(argv)
    if args.if_missing and args.path.exists() and truth_path(args.path).exists():
        return 0
    width, height = (int(v) for v in args.size.lower().split("x"))
    make_clip(args.path, seconds=args.seconds, fps=args.fps, size=(width, height), keyint=args.keyint)
    print(args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
