"""Free loopback ports: the one helper every test, benchmark and fault run picks ports with.

A port is free when the kernel hands it out for a bind to port 0. The socket is closed before
the port is returned, and the service that is meant to bind it does so only once it has started
(seconds later, for a Python service), so another process could take the port in between: a
service then fails to start with "address in use". Holding the socket open until the child has
bound would close that window only for children that bind with ``SO_REUSEADDR`` next to a socket
that is not listening, which not every child here is known to do (Triton's HTTP and metrics
servers, GStreamer's RTSP server), so the kit does not. The ephemeral range is large and the
kernel starts each search at a random offset, which keeps the race rare in practice.
"""

from __future__ import annotations

import socket
from contextlib import ExitStack

LOOPBACK = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: every socket stays open until all are chosen."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port() -> int:
    """One free port (see the module's note on the race with the process that binds it)."""
    [port] = free_ports(1)
    return port


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0
