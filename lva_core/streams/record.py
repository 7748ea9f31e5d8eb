"""A stream as the registry keeps it: what the user created, plus status and live statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lva_core.streams.rate import RateMeter
from lva_core.streams.spec import AnalyticSpec, Autorestart, SourceData
from lva_core.streams.state import Status, check_transition


@dataclass
class Statistics:
    frames_decoded: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    frame_age: float = 0.0
    reconnects: int = 0
    last_error: str | None = None
    # The current source's meter (the worker attaches it): decode_fps is over the last second
    # whenever it is read, and falls to 0 when frames stop, the source is lost or paused.
    decode_rate: RateMeter = field(default_factory=RateMeter, repr=False, compare=False)

    @property
    def decode_fps(self) -> float:
        return self.decode_rate.rate(time.monotonic())


@dataclass(frozen=True)
class Ownership:
    """Who runs a stream in a fleet, and the user's generation of it, as the shared store holds them.

    A worker's status write names all three (fleet/claims.py): it changes nothing once another
    agent took the stream (``agent_id``, ``incarnation``) or the user changed it from any core
    (``generation``, raised by every pause, resume and retry).
    """

    agent_id: str
    incarnation: int
    generation: int


@dataclass
class StreamRecord:
    stream_id: str
    account_id: str
    name: str
    description: str
    data: SourceData  # validated: kind is set
    analytics: list[AnalyticSpec]
    autorestart: Autorestart
    status: Status
    error: str | None = None
    create_time: float = field(default_factory=time.time)
    last_update_time: float = field(default_factory=time.time)
    statistics: Statistics = field(default_factory=Statistics)
    # In a fleet, the agent that runs it (None: no agent, or a single core on its own store).
    owner: Ownership | None = None

    def transition(self, target: Status, error: str | None = None) -> None:
        check_transition(self.status, target)
        self.status = target
        self.error = error
        self.last_update_time = time.time()
