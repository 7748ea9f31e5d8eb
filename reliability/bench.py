"""The stack the reliability suite breaks: its own Triton, core, facade and two RTSP cameras.

Everything is started as the end-to-end tests start it (lva_testkit/stack.py), on free ports, so
that killing any part of it leaves every other stack on the machine alone. Two cameras: the
*witness* camera feeds the healthy streams whose event rate must survive every fault, the
*fault* camera is the one that gets killed and frozen.

Witness streams are live RTSP streams analysed by ``pipeline_probe`` (the trivial model
``frame_stats``): one small event per sampled frame, so their event rate is the pipeline's
health and costs almost nothing to keep up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from benchmarks.api import PROBE, Api, Watcher, stream_body
from lva_core.runtime import procfs
from lva_testkit import clips
from lva_testkit.rtsp_server import RtspServer
from lva_testkit.stack import Stack, start_core, start_stack, start_triton
from reliability import census

CLIP_SIZE = (320, 180)
CLIP_FPS = 25
EVERY = 5  # witnesses analyse every 5th frame: 5 events/s each
HEARTBEAT_S = 2.0
READ_TIMEOUT_S = 3.0
RESTART = {"restart": 1, "attempt_count": 1000, "delay": 0.5}

CORE_ENV = {
    # A frozen camera is detected after this long (the default, 5 s, only makes the suite slower).
    "LVA_STREAMS__READ_TIMEOUT": str(READ_TIMEOUT_S),
    "LVA_STREAMS__OPEN_TIMEOUT": str(READ_TIMEOUT_S),
    # Churn creates streams far faster than an account may by default.
    "LVA_STREAMS__CREATE_RATE__PER_SECOND": "0",
    "LVA_CORE__HEALTH_TIMEOUT": "2",
    # The delivery section's outages end within seconds: retried at most a second apart (the
    # default backoff grows to 30 s), so that its lanes drain quickly after each.
    "LVA_DELIVERY__INITIAL_BACKOFF": "0.2",
    "LVA_DELIVERY__MAX_BACKOFF": "1.0",
}
FACADE_ENV = {"LVA_FACADE__WS_HEARTBEAT": str(HEARTBEAT_S)}


class Witness(Watcher):
    """A Watcher that keeps when each probe event arrived (monotonic) and its frame number."""

    def __init__(self, http: aiohttp.ClientSession, uri: str) -> None:
        super().__init__(http, uri, record_latency=False)
        self.arrivals: list[float] = []
        self.frames: list[int] = []
        self.errors: list[str] = []

    def _take(self, received: float, data: dict[str, Any]) -> None:
        super()._take(received, data)
        probe = (data.get("analytics_results") or {}).get("pipeline_probe")
        if probe is not None:
            self.arrivals.append(time.monotonic())
            self.frames.append(int(probe["frame_number"]))
        if data.get("error"):
            self.errors.append(str(data["error"]))

    def rate(self, start: float, end: float) -> float:
        """Events per second received between two monotonic instants."""
        count = sum(1 for t in self.arrivals if start <= t < end)
        return count / max(end - start, 1e-9)

    def missing(self, start: float, end: float) -> int:
        """Sampled frames with no event between two instants (frame numbers step by EVERY)."""
        frames = [f for t, f in zip(self.arrivals, self.frames, strict=True) if start <= t < end]
        gaps = 0
        for a, b in itertools.pairwise(frames):
            if b > a:  # a reconnected source numbers from 0 again: not a gap
                gaps += max(0, (b - a) // EVERY - 1)
        return gaps


@dataclass
class Bench:
    stack: Stack
    api: Api
    http: aiohttp.ClientSession
    witness_camera: RtspServer
    fault_camera: RtspServer
    clips: Path
    witnesses: dict[str, Witness] = field(default_factory=dict)
    retired_lost: int = 0  # lost_messages of witnesses already closed

    @property
    def log_dir(self) -> Path:
        return self.stack.log_dir

    # ---- census -----------------------------------------------------------------------------

    def core_census(self) -> dict[str, int]:
        return census.core_census(self.stack.core.proc.pid, self.stack.core.metrics_port)

    def facade_census(self) -> dict[str, int]:
        return census.process_census(self.stack.facade.proc.pid)

    def census(self) -> dict[str, dict[str, int]]:
        return {"core": self.core_census(), "facade": self.facade_census()}

    async def settle(self, baseline: dict[str, dict[str, int]], timeout: float = 30.0) -> dict[str, Any]:
        return {
            "core": await census.settle(self.core_census, baseline["core"], timeout),
            "facade": await census.settle(self.facade_census, baseline["facade"], timeout),
        }

    # ---- witnesses --------------------------------------------------------------------------

    def live_body(self, url: str, name: str) -> dict[str, Any]:
        body = stream_body(url, PROBE, live=True, every=EVERY, name=name)
        body["autorestart"] = RESTART
        return body

    async def start_witnesses(self, count: int, timeout: float = 60.0) -> None:
        for _ in range(count):
            stream_id = await self.api.create(self.live_body(self.witness_camera.url, "witness"))
            witness = Witness(self.http, f"{self.api.ws_url}?stream_id={stream_id}")
            self.witnesses[stream_id] = witness
            witness.start()
        deadline = time.monotonic() + timeout
        while not all(len(w.arrivals) >= 3 for w in self.witnesses.values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"witnesses got no events within {timeout} s")
            await asyncio.sleep(0.2)

    async def stop_witnesses(self) -> None:
        for stream_id, witness in list(self.witnesses.items()):
            await witness.close()
            self.retired_lost += witness.lost
            with contextlib.suppress(RuntimeError, aiohttp.ClientError):
                await self.api.delete(stream_id)
        self.witnesses.clear()

    def witness_rates(self, start: float, end: float) -> list[float]:
        return [round(w.rate(start, end), 2) for w in self.witnesses.values()]

    def witness_lost(self) -> int:
        return self.retired_lost + sum(w.lost for w in self.witnesses.values())

    def witness_missing(self, start: float, end: float) -> int:
        return sum(w.missing(start, end) for w in self.witnesses.values())

    # ---- the parts to break ------------------------------------------------------------------

    def kill_triton(self) -> tuple[int, list[Path]]:
        """SIGKILL Triton's whole tree (launcher, tritonserver, backend stubs): a crash.

        Returns its port and the /dev/shm files it had mapped that outlived it: a killed Triton
        cannot remove its Python backend's regions. They are a figure of the fault; the caller
        removes them, so that repeated runs do not fill /dev/shm.
        """
        pids = procfs.tree(self.stack.triton.proc.pid)
        mapped = census.mapped_shm(pids)
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.stack.triton.stop()
        deadline = time.monotonic() + 5
        while any(procfs.exists(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Not the core's regions (Triton maps those too): they are the core's to keep.
        own = [path for path in mapped if not path.name.startswith(census.SHM_PREFIX)]
        return self.stack.triton.port, [path for path in own if path.exists()]

    def restart_triton(self, port: int) -> None:
        self.stack.triton = start_triton(self.log_dir, grpc_port=port, timeout=120)

    def kill_core(self) -> int:
        pid = self.stack.core.proc.pid
        self.stack.core.stop(signal.SIGKILL)
        return pid

    def restart_core(self) -> None:
        old = self.stack.core
        self.stack.core = start_core(
            self.log_dir,
            self.stack.triton.address,
            CORE_ENV,
            port=old.port,
            metrics_port=old.metrics_port,
            store=old.store_path,  # its streams come back with it
        )

    async def stop(self) -> None:
        await self.stop_witnesses()
        self.stack.stop()
        self.witness_camera.stop()
        self.fault_camera.stop()


def clip(directory: Path, name: str, seconds: float) -> Path:
    return clips.clip(directory, name, seconds, size=CLIP_SIZE, fps=CLIP_FPS)


async def start_bench(log_dir: Path, http: aiohttp.ClientSession) -> Bench:
    """The stack and cameras. Clips live beside ``log_dir``, where the core may read files."""
    clips = log_dir.parent / "reliability-clips"
    await asyncio.to_thread(clips.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    live = await asyncio.to_thread(clip, clips, "live.mp4", 4.0)
    # The witnesses' camera gives every client a media of its own: with one shared media,
    # clients that vanish (a killed core's, churn's) have been seen to end the stream for every
    # other client.
    witness_camera = RtspServer(live, log_dir / "rtsp-witness.log", shared=False)
    fault_camera = RtspServer(live, log_dir / "rtsp-fault.log")
    started: list[RtspServer] = []
    try:
        for camera in (witness_camera, fault_camera):
            started.append(await asyncio.to_thread(camera.start))
        stack = await asyncio.to_thread(start_stack, log_dir, CORE_ENV, FACADE_ENV, 120)
    except BaseException:
        for part in reversed(started):
            part.stop()
        raise
    api = Api(http, stack.base_url, stack.ws_url)
    return Bench(stack, api, http, witness_camera, fault_camera, clips)


async def wait_for(
    predicate: Any, timeout: float, what: str, poll: float = 0.2, args: Sequence[Any] = ()
) -> float:
    """Await ``predicate(*args)`` until true; the seconds it took. TimeoutError names ``what``."""
    started = time.monotonic()
    while True:
        if await predicate(*args):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what} not within {timeout:.0f} s")
        await asyncio.sleep(poll)


async def raw_ws_client(ws_url: str, stream_id: str) -> socket.socket:
    """A WebSocket client that completes the upgrade and then never reads again (unless asked).

    Its receive buffer is made tiny first, so TCP pushes back on the facade at once; it never
    answers the facade's pings, so the heartbeat is what must end it.
    """
    url = urlsplit(ws_url)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.setblocking(False)
    await loop.sock_connect(sock, (url.hostname or "127.0.0.1", url.port or 80))
    request = (
        f"GET {url.path}?stream_id={stream_id} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await loop.sock_recv(sock, 1)  # byte by byte: not one byte past the headers
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.decode(errors="replace"))
    return sock
