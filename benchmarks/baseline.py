"""Bare PyAV decoding, the pipeline's yardstick: ``python -m benchmarks.baseline CLIP --streams N``.

N threads in one process, one per stream, each decoding the whole clip and converting every
frame to rgb24: the layout of the core, which decodes each stream in a thread of its own and
converts every sampled frame once with swscale. Decoder settings are PyAV's defaults, as in the
core's ``VideoSource``. It runs as a separate process so that the benchmark's own event loop and
memory do not share its interpreter, as the core's do not. Prints one JSON object.
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
from av.video.reformatter import VideoReformatter


def decode(path: str, counts: list[int], index: int, start: threading.Barrier) -> None:
    start.wait()
    frames = 0
    # "file:" as the core does: FFmpeg's file protocol, no probing of the name for a protocol.
    with av.open(f"file:{path}") as container:
        stream = container.streams.video[0]
        codec = stream.codec_context
        # The core's own conversion settings (lva_core/pipeline/source/transform.py): one
        # reformatter per stream, one thread, so that the ratio compares like with like.
        rgb = VideoReformatter()
        for packet in container.demux(stream):
            for frame in codec.decode(packet):
                rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()
                frames += 1
    counts[index] = frames


def run(path: str, streams: int) -> dict[str, Any]:
    counts = [0] * streams
    # +1: the timing thread releases the decoders together, after every thread exists.
    start = threading.Barrier(streams + 1)
    threads = [
        threading.Thread(target=decode, args=(path, counts, i, start), name=f"decode:{i}")
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
        "seconds": round(seconds, 4),
        "fps": frames / seconds if seconds > 0 else 0.0,
        "cpu_seconds": round(cpu, 4),
        "per_stream_frames": counts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("clip")
    parser.add_argument("--streams", type=int, default=1)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.clip, args.streams)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
