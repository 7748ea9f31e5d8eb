"""The stream lifecycle: one explicit state machine, every transition in this one table.

Statuses are LUNA Video Manager's plus pause. ``stop`` and deletion are allowed from every
state, a source that is still trying to connect included.
"""

from __future__ import annotations

import enum

from lva_common.errors import CONFLICT, LunaError


class Status(enum.Enum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    PAUSE = "pause"
    RESTART = "restart"
    DONE = "done"
    FAILURE = "failure"
    STOP = "stop"

    @property
    def active(self) -> bool:
        """A worker runs (or tries to run) the source in these states."""
        return self in (Status.PENDING, Status.IN_PROGRESS, Status.RESTART)


S = Status
TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.PENDING: frozenset({S.IN_PROGRESS, S.RESTART, S.FAILURE, S.DONE, S.PAUSE, S.STOP}),
    S.IN_PROGRESS: frozenset({S.RESTART, S.DONE, S.FAILURE, S.PAUSE, S.STOP}),
    # restart -> pending: the user's "retry now", instead of waiting out the backoff.
    S.RESTART: frozenset({S.IN_PROGRESS, S.RESTART, S.FAILURE, S.PAUSE, S.PENDING, S.STOP}),
    S.PAUSE: frozenset({S.PENDING, S.STOP}),
    # A finished, failed or stopped stream can be started again by the user.
    S.DONE: frozenset({S.PENDING, S.STOP}),
    S.FAILURE: frozenset({S.PENDING, S.STOP}),
    S.STOP: frozenset({S.PENDING}),
}
# What a user may ask for with PATCH: pause, and pending to resume (LUNA's stop -> pending).
USER_TARGETS = frozenset({S.PAUSE, S.PENDING})


def can_transition(current: Status, target: Status) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: Status, target: Status) -> None:
    if not can_transition(current, target):
        raise LunaError(CONFLICT, f"a stream in status {current.value} cannot go to {target.value}")
