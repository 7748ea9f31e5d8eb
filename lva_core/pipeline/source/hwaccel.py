"""Hardware decoding (``decoder.hwaccel``): NVDEC when this machine has it, software otherwise.

``auto`` (the default) decodes with CUDA (NVDEC) where a CUDA device can be opened, and in
software everywhere else, with the reason logged once per stream. ``cuda`` insists: a stream
that cannot have it fails (``unsupported_codec``, not retried). ``none`` never tries.

Whether CUDA works is learned once per process, by creating a device context for the H.264
decoder, apart from any source: on a machine without a GPU (or without the driver) that
raises, where opening a container with the accelerator would raise only after the source was
already connected. With a device, a stream opens with ``allow_software_fallback``: a codec
NVDEC cannot decode is decoded in software by FFmpeg itself. Frames are downloaded to system
memory (NV12), which the stream's reformatter converts like any other (transform.py).
"""

from __future__ import annotations

import logging
import threading

import av
from av.codec.hwaccel import HWAccel

log = logging.getLogger("lva_core.pipeline.source")

HWACCEL_MODES = ("auto", "cuda", "none")
_DEVICE = "cuda"

_lock = threading.Lock()
# Device type -> None when a device context can be created here, else why not.
_verdicts: dict[str, str | None] = {}
_logged: set[str] = set()  # streams told already why they decode in software


def device_problem(device: str = _DEVICE) -> str | None:
    """None when this process can open a ``device`` decoder, otherwise why not (learned once)."""
    with _lock:
        if device not in _verdicts:
            try:
                HWAccel(device).create(av.codec.Codec("h264", "r"))
                _verdicts[device] = None
            except Exception as exc:  # PermissionError without a GPU; others without a driver
                _verdicts[device] = f"{type(exc).__name__}: {exc}"
        return _verdicts[device]


def accelerator(mode: str, stream_id: str) -> HWAccel | None:
    """The accelerator a stream opens with under ``mode`` (None: software).

    Raises ``LookupError`` with the reason when ``mode`` is ``cuda`` and there is no device.
    """
    if mode not in HWACCEL_MODES:
        raise ValueError(f"decoder.hwaccel must be one of {HWACCEL_MODES}, not {mode!r}")
    if mode == "none":
        return None
    problem = device_problem()
    if problem is None:
        if stream_id not in _logged:
            _logged.add(stream_id)
            log.info("decoding with NVDEC (cuda)")
        return HWAccel(_DEVICE, allow_software_fallback=True)
    if mode == "cuda":
        raise LookupError(problem)
    if stream_id not in _logged:
        _logged.add(stream_id)
        log.info("no NVDEC here (%s): decoding in software", problem)
    return None
