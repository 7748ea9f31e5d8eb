"""Loopback ports: how the kit gives its services ports without racing other processes for them.

A port picked in the test process and handed to a child is free when it is picked, not when the
child binds it (seconds later, for a Python service): another process can take it in between.
The kit closes that window three ways, whichever the child allows:

* **The child binds port 0 and the kit reads back the port it got**: the core (its log names
  both ports), the facade (:func:`listening_ports` of its process: it listens on one port only)
  and the RTSP server (it writes its port to a file). Nothing can take such a port first.
* **A picked port, a check that the child owns it, and a fresh start on "address in use"**:
  Triton, whose three ports must be named on its command line. A start whose port another
  process took fails, or would answer from the other process: :func:`listening_ports` of the
  child's process tree tells the two apart, and the kit starts again on fresh ports
  (:func:`address_in_use` recognises the failure).
* **A port held for as long as nothing may listen on it**: :func:`refused_port` keeps a socket
  bound to it without listening, so a connection is refused and no other process can bind it.

A restart at a known address (a core, a camera or Triton coming back where it was) binds a
port it has just released; that cannot be made safe by the kit, and it is rare.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

LOOPBACK = "127.0.0.1"
# How the children here say that a port was taken: Python (errno 98), Triton's servers, GLib.
_IN_USE = ("address already in use", "already in use", "errno 98", "address in use")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now (every socket open until all are chosen), then released.

    Free when returned, not reserved: whoever binds one later must check that it got it (see the
    module's note).
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port() -> int:
    """One port free now (see :func:`free_ports`)."""
    [port] = free_ports(1)
    return port


@contextmanager
def refused_port() -> Iterator[int]:
    """A port where nothing listens, for as long as the block runs.

    A socket bound to it, never listening and without ``SO_REUSEADDR``, holds it: a connection
    is refused at once, and no other process can bind the port while the block runs.
    """
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        yield int(sock.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (not who: see listening_ports)."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # gone, or not ours
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def listening_ports(pids: int | Iterable[int]) -> set[int]:
    """The TCP ports on which these processes themselves listen (from /proc, Linux).

    What tells a child's own port from one that another process took first: ``port_open``
    answers yes for either.
    """
    pid_list = [pids] if isinstance(pids, int) else list(pids)
    inodes: set[str] = set()
    for pid in pid_list:
        inodes |= _socket_inodes(pid)
    if not inodes or not pid_list:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid_list[0]}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def address_in_use(text: str) -> bool:
    """Whether a child's output says that a port it was to bind was taken."""
    lowered = text.lower()
    return any(marker in lowered for marker in _IN_USE)
