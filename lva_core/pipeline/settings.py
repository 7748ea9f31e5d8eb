"""The frame path's settings, typed, from the ``streams`` section of the configuration.

Every default lives in ``lva_common.config.DEFAULTS``; this only reads and types them
(``config.section``), so a partial section (a unit test's) gets the same defaults as the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lva_common.config import ConfigError, section
from lva_core.pipeline.source.hwaccel import HWACCEL_MODES


@dataclass(frozen=True)
class StreamSettings:
    open_timeout: float
    read_timeout: float
    probe_duration: float
    buffer_size: int
    subscriber_queue: int
    # An empty list allows no local file at all (network sources only); see docs/security.md.
    allowed_dirs: tuple[Path, ...]
    # decoder.hwaccel: auto (NVDEC where there is one), cuda or none (source/hwaccel.py).
    hwaccel: str = "auto"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> StreamSettings:
        streams = section(config, "streams")
        return cls(
            open_timeout=float(streams["open_timeout"]),
            read_timeout=float(streams["read_timeout"]),
            probe_duration=float(streams["probe_duration"]),
            buffer_size=int(streams["buffer_size"]),
            subscriber_queue=int(streams["subscriber_queue"]),
            allowed_dirs=tuple(Path(d) for d in streams["allowed_file_dirs"] or []),
            hwaccel=_hwaccel(config),
        )


def _hwaccel(config: dict[str, Any]) -> str:
    mode = str((config.get("decoder") or {}).get("hwaccel", "auto")).strip().lower()
    if mode not in HWACCEL_MODES:
        raise ConfigError(f"decoder.hwaccel must be one of {', '.join(HWACCEL_MODES)}, not {mode!r}")
    return mode
