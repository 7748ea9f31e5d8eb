"""Build the realistic clip: what a 720p camera sends, made from real photographs.

    python tools/make_real_clip.py OUT.mp4 [--seconds 10] [--fps 25] [--size 1280x720] [--kbps 3000]

The sample clip (``lva_testkit/clips.py``) slides photographs over a smooth gradient: x264 needs
about 430 kb/s for it, so it is unusually cheap to decode and makes the per-frame overhead of
anything that decodes it look large. A real 720p camera sends 2 to 4 Mb/s of a textured scene
with sensor noise in every frame. This clip is that:

- **the scene**: the group photograph that insightface ships (six people round a table;
  ``tools/models/testdata.py`` ``GROUP_PHOTO``, fetched by ``make models``, never downloaded
  here), cropped to the frame's aspect ratio and scaled to it, still, as a fixed camera's view;
- **motion**: the sample clip's own photographs (scikit-image's astronaut and cameraman, two
  LFW faces) sliding over it along the sample clip's paths (``lva_testkit.clips``);
- **sensor noise**: Gaussian luminance grain, ``--noise`` levels (standard deviation, default 3), new in every
  frame, from a seeded generator (the same on the three channels: a camera's chroma noise
  reduction leaves little else);
- **the encoder**: x264 at a fixed bit rate (``--kbps``, VBV max rate the same, a 2 s buffer: a
  camera's constant rate), a keyframe every 2 s, no B-frames (as IP cameras' streams), one
  thread, so that the same arguments give the same bytes on the same PyAV build.

:func:`cached_real_clip` keeps one per parameters in a folder (the benchmarks' cache), named
after the parameters and a hash of what builds it (this file, ``lva_testkit/clips.py``, the
photograph's checksum): a change to any of them builds a new clip. :func:`bitrate` measures
what was written, from the packets themselves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

# Runnable as `python tools/make_real_clip.py` from anywhere: the script's own folder is on
# sys.path, not the repository root, where lva_testkit lives (it is not installed).
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lva_testkit import clips  # noqa: E402
from tools.models import testdata  # noqa: E402

SEED = 14
KEYFRAME_SECONDS = 2


def scene(size: tuple[int, int]) -> np.ndarray[Any, Any]:
    """The group photograph, centre-cropped to ``size``'s aspect ratio and scaled to it (RGB)."""
    width, height = size
    with Image.open(testdata.path(testdata.GROUP_PHOTO)) as opened:
        photo = opened.convert("RGB")
    pw, ph = photo.size
    if pw * height > ph * width:  # wider than the frame: crop the sides
        crop_w, crop_h = round(ph * width / height), ph
    else:
        crop_w, crop_h = pw, round(pw * height / width)
    left, top = (pw - crop_w) // 2, (ph - crop_h) // 2
    cropped = photo.crop((left, top, left + crop_w, top + crop_h))
    return np.asarray(cropped.resize((width, height), Image.Resampling.BICUBIC))


def make_real_clip(
    path: str | Path,
    seconds: float = 10.0,
    fps: int = 25,
    size: tuple[int, int] = (1280, 720),
    kbps: int = 3000,
    noise: float = 3.0,
) -> Path:
    """Write the clip to ``path`` (see the module); return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    if width % 2 or height % 2:
        raise ValueError("yuv420p needs an even width and height")
    sx, sy = width / clips.BASE_SIZE[0], height / clips.BASE_SIZE[1]
    tiles = clips._tiles(min(sx, sy))
    background = scene(size).astype(np.int16)
    rng = np.random.default_rng(SEED)
    count = max(1, round(seconds * fps))
    keyint = KEYFRAME_SECONDS * fps
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = keyint
        stream.codec_context.thread_count = 1  # deterministic output (see lva_testkit/clips.py)
        stream.options = {
            "preset": "veryfast",
            "x264-params": (
                f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0:"
                f"bitrate={kbps}:vbv-maxrate={kbps}:vbv-bufsize={2 * kbps}"
            ),
        }
        for index in range(count):
            canvas = background.copy()
            t = index / count
            for tile in tiles:
                clips.place_tile(canvas, tile, t, (sx, sy))
            # Luminance grain, the same on every channel: what a camera's processing leaves of
            # its sensor's noise once its chroma noise reduction has run.
            grain = np.rint(rng.standard_normal((height, width, 1), dtype=np.float32) * noise)
            pixels = np.clip(canvas + grain.astype(np.int16), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def bitrate(path: str | Path) -> dict[str, Any]:
    """What the clip holds, measured: its video packets' bits over its duration, and FFmpeg's view."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0)
        sizes, keyframes = [], 0
        for packet in container.demux(stream):
            if packet.size:  # the demuxer's last, empty packet flushes the decoder
                sizes.append(packet.size)
                keyframes += int(packet.is_keyframe)
        seconds = len(sizes) / fps if fps else 0.0
        return {
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": fps,
            "frames": len(sizes),
            "seconds": round(seconds, 3),
            "codec": stream.codec_context.name,
            "profile": stream.codec_context.profile,
            "keyframes": keyframes,
            # Measured from the packets: sum of their sizes over the clip's duration.
            "video_kbps": round(8 * sum(sizes) / seconds / 1000, 1) if seconds else None,
            # What FFmpeg reports for the container (the MP4's own accounting).
            "container_kbps": round(container.bit_rate / 1000, 1) if container.bit_rate else None,
        }


def _key(**parameters: Any) -> str:
    digest = hashlib.sha256()
    for source in (Path(__file__), Path(clips.__file__)):
        digest.update(source.read_bytes())
    digest.update(testdata.GROUP_PHOTO.package[2].encode())
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    return digest.hexdigest()[:10]


def cached_real_clip(
    directory: Path,
    seconds: float,
    fps: int = 25,
    size: tuple[int, int] = (1280, 720),
    kbps: int = 3000,
    noise: float = 3.0,
) -> Path:
    """The clip of these parameters in ``directory``, built once (under a temporary name) and kept.

    Clips of the same parameters built by an older builder (another hash) are removed.
    """
    key = _key(seconds=seconds, fps=fps, size=list(size), kbps=kbps, noise=noise, seed=SEED)
    stem = f"real-{size[0]}x{size[1]}-{fps}fps-{seconds:g}s-{kbps}k"
    path = directory / f"{stem}-{key}.mp4"
    if not path.exists():
        partial = path.with_name(path.stem + ".partial.mp4")
        make_real_clip(partial, seconds=seconds, fps=fps, size=size, kbps=kbps, noise=noise)
        partial.replace(path)
        for old in directory.glob(f"{stem}-*.mp4"):
            if old != path:
                old.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    parser.add_argument("--kbps", type=int, default=3000, help="the encoder's bit rate")
    parser.add_argument("--noise", type=float, default=3.0, help="sensor noise, sigma in levels")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    make_real_clip(
        args.path, seconds=args.seconds, fps=args.fps, size=(width, height), kbps=args.kbps, noise=args.noise
    )
    print(json.dumps({"path": str(args.path), **bitrate(args.path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
