"""What Linux's /proc says about processes: the one reader of it for the core, tests and tools.

Every reader here treats a process that is gone (or that exits while it is read, or belongs to
another user and is unreadable) as absent rather than raising: /proc changes under any walk of
it, and callers ask "what is there now", never "what was there when I started".

``/proc/<pid>/stat`` is split after the *last* ``)``: the command name is in parentheses and may
contain spaces and parentheses itself. Field numbers in the docstrings are proc(5)'s (1-based).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Indices into stat_fields(), which starts at field 3 (the state).
_STATE, _PPID, _UTIME, _STIME, _STARTTIME = 0, 1, 11, 12, 19


def exists(pid: int) -> bool:
    """Whether ``pid`` names a process (a zombie included: it still holds its pid)."""
    return (PROC / str(pid)).exists()


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from field 3 (the state) on; None when the process is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _field(pid: int, index: int) -> str | None:
    fields = stat_fields(pid)
    return fields[index] if fields is not None and len(fields) > index else None


def state(pid: int) -> str | None:
    """The state letter (field 3: ``R``, ``S``, ``Z``...); None when the process is gone."""
    return _field(pid, _STATE)


def start_time(pid: int) -> str | None:
    """The start time (field 22): with the pid it names one process, despite pid reuse."""
    return _field(pid, _STARTTIME)


def gone(pid: int) -> bool:
    """Whether the process has exited: absent, or a zombie (it has let go of everything but its pid)."""
    return state(pid) in (None, "Z")


def running(pid: int, identity: str) -> bool:
    """Whether the process ``pid`` that started at ``identity`` (:func:`start_time`) still runs.

    A zombie counts as gone: it has already let go of its memory, its mappings and its fds.
    """
    fields = stat_fields(pid)
    return (
        fields is not None
        and len(fields) > _STARTTIME
        and fields[_STARTTIME] == identity
        and fields[_STATE] != "Z"
    )


def _processes() -> dict[int, list[str]]:
    """The stat fields of every process that can be read now."""
    found: dict[int, list[str]] = {}
    for entry in PROC.glob("[0-9]*"):
        fields = stat_fields(int(entry.name))
        if fields is not None and len(fields) > _STARTTIME:
            found[int(entry.name)] = fields
    return found


def children(pid: int) -> dict[int, str]:
    """The direct children of ``pid``, each with its start time (its identity)."""
    parent = str(pid)
    return {child: f[_STARTTIME] for child, f in _processes().items() if f[_PPID] == parent}


def command_line(pid: int) -> list[str]:
    """The arguments ``pid`` was started with; [] when it is gone or unreadable."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1] if raw else []


def started_with(predicate: Callable[[list[str]], bool]) -> dict[int, str]:
    """Every live process whose arguments satisfy ``predicate``, each with its identity."""
    found = {}
    for pid, fields in _processes().items():
        if fields[_STATE] != "Z" and predicate(command_line(pid)):
            found[pid] = fields[_STARTTIME]
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and every live descendant of it, parents before their children."""
    below: dict[int, list[int]] = {}
    for child, fields in _processes().items():
        below.setdefault(int(fields[_PPID]), []).append(child)
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(below.get(current, []))
    return found


def rss_kib(pid: int) -> int:
    """Resident memory (VmRSS) of one process in KiB; 0 when it is gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (fields 14 and 15); 0 when it is gone."""
    fields = stat_fields(pid)
    if fields is None or len(fields) <= _STIME:
        return 0.0
    return (int(fields[_UTIME]) + int(fields[_STIME])) / CLOCK_TICKS


def tree_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants (Triton: its server and backend stubs)."""
    return sum(rss_kib(each) for each in tree(pid))


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(each) for each in tree(pid))


def _count(path: Path) -> int:
    try:
        return len(os.listdir(path))
    except OSError:
        return 0


def thread_ids(pid: int) -> set[int]:
    """The ids of the process's threads (native ones included); empty when it is gone."""
    try:
        return {int(name) for name in os.listdir(PROC / str(pid) / "task")}
    except OSError:
        return set()


def thread_count(pid: int) -> int:
    return _count(PROC / str(pid) / "task")


def fd_count(pid: int) -> int:
    """Open file descriptors of the process; 0 when it is gone."""
    return _count(PROC / str(pid) / "fd")


def mapped_paths(pids: Iterable[int] | None = None) -> set[str]:
    """The files that ``pids`` (every readable process when None) have mapped into memory.

    A file unlinked while mapped shows as ``<path> (deleted)``; the suffix is dropped, so that the
    path is the one the file had.
    """
    sources = PROC.glob("[0-9]*/maps") if pids is None else (PROC / str(pid) / "maps" for pid in pids)
    mapped: set[str] = set()
    for maps in sources:
        try:
            text = maps.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            fields = line.split(maxsplit=5)  # address, perms, offset, device, inode, path
            if len(fields) == 6:
                mapped.add(fields[5].removesuffix(" (deleted)"))
    return mapped


def mapped_under(prefix: str, pids: Iterable[int] | None = None) -> set[Path]:
    """The mapped files (see :func:`mapped_paths`) whose path starts with ``prefix``."""
    return {Path(path) for path in mapped_paths(pids) if path.startswith(prefix)}
