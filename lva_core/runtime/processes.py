"""The launchers' child processes (``make run``, ``make fleet``): stopping one, waiting for a port."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

from lva_common.aio import wait_within

# Seconds a child has, after its SIGTERM, before it is killed.
STOP_TIMEOUT = 15.0


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL once ``timeout`` has passed; returns once the process has exited."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await wait_within(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def wait_port(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` accepted a TCP connection within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        writer.close()
        await writer.wait_closed()
        return True
    return False


def listening(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port`` now."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0
