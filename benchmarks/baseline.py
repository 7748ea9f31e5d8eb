"""Bare PyAV decoding, the pipeline's yardstick: ``python -m benchmarks.baseline CLIP --streams N``.

N threads in one process, one per stream, each decoding the whole clip and converting every
frame to rgb24: the layout of the core, which decodes each stream in a thread of its own and
converts every sampled frame once with swscale. Decoder settings are PyAV's defaults, as in the
core's ``VideoSource``. It runs as a separate process so that the benchmark's own event loop and
memory do not share its interpreter, as the core's do not. Prints one JSON object.

``--every K`` converts only every K-th frame, as a stream sampling every K-th frame does (all are
decoded). ``--format``, ``--size`` and ``--resize`` convert to the frame a model declares
(``frame_format``, ``frame_size``, ``frame_resize`` in its config.pbtxt; docs/triton.md) instead
of full-size RGB, through the core's own conversion (``lva_core.pipeline.pixels``: the same
swscale contexts, filter and steps). Without them it is the yardstick described above.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from typing import Any

import av

from lva_core.inference.frame_format import RGB, FrameFormat
from lva_core.pipeline.pixels import Converter, Pixels


def decode(
    path: str,
    counts: list[int],
    index: int,
    start: threading.Barrier,
    every: int = 1,
    fmt: FrameFormat = RGB,
) -> None:
    start.wait()
    frames = 0
    # "file:" as the core does: FFmpeg's file protocol, no probing of the name for a protocol.
    with av.open(f"file:{path}") as container:
        stream = container.streams.video[0]
        codec = stream.codec_context
        # The core's own conversion (lva_core/pipeline/pixels.py): one set of swscale contexts
        # per stream, one thread each, so that the ratio compares like with like.
        converter = Converter()
        for packet in container.demux(stream):
            for frame in codec.decode(packet):
                if frames % every == 0:
                    whole = (0, 0, int(frame.width), int(frame.height))
                    Pixels(frame, whole, converter).array(fmt)
                frames += 1
    counts[index] = frames


def run(path: str, streams: int, every: int = 1, fmt: FrameFormat = RGB) -> dict[str, Any]:
    counts = [0] * streams
    # +1: the timing thread releases the decoders together, after every thread exists.
    start = threading.Barrier(streams + 1)
    threads = [
        threading.Thread(target=decode, args=(path, counts, i, start, every, fmt), name=f"decode:{i}")
        for i in range(streams)
    ]
    for thread in threads:
        thread.start()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    frames = sum(counts)
    return {
        "streams": streams,
        "frames": frames,
        "converted": sum(-(-n // every) for n in counts),
        "every": every,
        "format": fmt.name,
        "seconds": round(seconds, 4),
        "fps": frames / seconds if seconds > 0 else 0.0,
        "cpu_seconds": round(cpu, 4),
        "per_stream_frames": counts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("clip")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--every", type=int, default=1, help="convert every N-th frame (all are decoded)")
    parser.add_argument("--format", choices=("rgb", "i420"), default="rgb", help="the frame's layout")
    parser.add_argument("--size", default=None, help="WxH the frame is scaled to (rgb only)")
    parser.add_argument("--resize", choices=("stretch", "fit"), default="stretch")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None
    fmt = FrameFormat(args.format, (size[0], size[1]) if size else None, args.resize)
    print(json.dumps(run(args.clip, args.streams, args.every, fmt)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
