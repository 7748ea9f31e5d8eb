"""What a user asks for when creating a stream, in the core's own types (no wire types).

The servicers build these from the protobuf request (``lva_core/api/convert.py``); validation
(``validation.py``) checks them and fills in the defaults. ``None`` means "not given": the
contract tells an absent ROI or rate from a zero one, and so do these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lva_core.streams.state import Status

SourceKind = Literal["stream", "videofile"]
RoiMode = Literal["abs", "percent"]
RateUnit = Literal["frame", "second"]


@dataclass(frozen=True)
class Roi:
    """A region of interest of the (rotated) source frame."""

    x: float
    y: float
    width: float
    height: float
    mode: RoiMode | None = None  # None: not given, which means pixels

    @property
    def percent(self) -> bool:
        return self.mode == "percent"


@dataclass(frozen=True)
class Rate:
    """Which frames to analyse: every ``period``-th frame, or ``period`` frames per second."""

    period: float
    unit: RateUnit | None = None  # None: not given, which means frames


@dataclass(frozen=True)
class SourceData:
    """The stream's ``data``: where the video comes from and which pixels of which frames to use."""

    reference: str
    kind: SourceKind | None = None  # None until validation infers it from the reference
    rotation: int = 0
    roi: Roi | None = None
    rate: Rate | None = None

    @property
    def live(self) -> bool:
        """The one live-or-file decision: a live stream reconnects at its end, a file is done."""
        return self.kind != "videofile"


@dataclass(frozen=True)
class Autorestart:
    restart: int = 0  # 0 or 1, as the contract has it (validation refuses anything else)
    attempt_count: int = 0
    delay: float = 0.0


@dataclass(frozen=True)
class AnalyticSpec:
    name: str
    parameters: dict[str, Any]  # validated, defaults filled in


@dataclass(frozen=True)
class StreamSpec:
    """A create request. ``data`` None: not given (refused); ``autorestart`` None: the defaults."""

    data: SourceData | None
    account_id: str = ""
    name: str = ""
    description: str = ""
    analytics: tuple[AnalyticSpec, ...] = field(default_factory=tuple)
    autorestart: Autorestart | None = None
    status: Status | None = None  # the initial status; None: pending
