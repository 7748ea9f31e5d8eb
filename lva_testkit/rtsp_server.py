"""A real RTSP camera: GStreamer's RTSP server serving an H.264 MP4 file, looped.

Debian's ffmpeg cannot serve RTSP, so tests use GStreamer's ``gst-rtsp-server`` through
PyGObject. ``gi`` is in Debian's ``/usr/bin/python3``, not in the project's virtual environment,
so this file has two halves:

* imported (by tests and benchmarks, under the venv's Python): :class:`RtspServer` starts this
  same module as ``/usr/bin/python3 -m lva_testkit.rtsp_server`` (from the repository root) on
  port 0, reads back the port it bound, and stops, kills, freezes (SIGSTOP) and thaws (SIGCONT)
  it: the failure modes a camera has.
* run as a program: the server itself. The pipeline is the one DESIGN.md measured,
  ``filesrc ! qtdemux name=demux ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96``.
  ``config-interval=-1`` repeats SPS/PPS before every keyframe, so a client joining at any
  time can start decoding at the next keyframe. Debian's Python has none of the venv's
  packages, so this module imports only the standard library and the kit's stdlib-only modules.

The file loops so that the stream stays live: at the end of the file the media seeks back to
the start with a *segment* seek, which keeps running time, and so RTP timestamps, increasing
across the loop (a flushing seek would restart them). The media answers that it cannot seek, as
a camera cannot: otherwise a client joining a shared media makes the server seek it to the PLAY
range, which undoes the segment seek, and every client sees the stream end at the end of the
file. By default every client shares one media
(``set_shared``), like a camera's single encoder: all clients receive the same frame at the same
instant. ``shared=False`` gives each client a media of its own, started when it connects, so N
clients that connect one after another are out of phase, as N real cameras are (the benchmarks
use it: frames of N "cameras" in lockstep would batch perfectly and flatter the core).

Many cameras
------------

One server can be many cameras: ``mounts=24`` serves ``/cam0`` ... ``/cam23``, and
``mounts=["/a", "/b"]`` serves those paths; without ``mounts`` it serves the one ``mount``
(``/stream`` by default), as it always did. Every mount has a media factory of its own, so no
two mounts ever share a media; within a mount, ``shared`` applies as above. A mount's media is
built when its first client comes, so idle mounts cost nothing. :meth:`RtspServer.url_of` and
:attr:`RtspServer.urls` give the mounts' URLs (:attr:`RtspServer.url` is the first one's).

Readers: who is watching each camera
------------------------------------

The fleet's tests must prove that no camera ever has two readers of one stream, so the server
process accounts for every RTSP session of every mount and checks continuously:

* A **session** is an RTSP session (its session id) set up (SETUP) on a mount, by a client
  connection whose peer address (``127.0.0.1:port``) it records. It ends at TEARDOWN, when its
  connection closes, or when the session pool removes it (timeout). ``sessions_seen`` counts the
  sessions ever set up on a mount.
* The client's **process** is found once per connection, when it connects: the peer's TCP port
  is looked up in ``/proc/net/tcp`` and ``/proc/net/tcp6`` (the socket whose local address is
  the peer and whose remote port is the server's), which gives the socket's inode, and the
  processes holding that inode are found through the ``/proc/<pid>/fd`` links (tests run as
  root, so every process's links are readable). The pids and their start times (field 22 of
  ``/proc/<pid>/stat``: a reused pid is not the client) are cached for the connection. A
  lookup that finds no process is retried at most once a second.
* Every :data:`SAMPLE_SECONDS` (50 ms, a GLib timeout in the server's main loop), and at once on
  every SETUP, PLAY, PAUSE, TEARDOWN, connect and close, the server **samples**: it reads the
  state (field 3 of ``/proc/<pid>/stat``) of each client's processes.

**The rule.** At a sample at time *t*, a session is **reading** if and only if it is playing (a
PLAY succeeded, and no PAUSE or TEARDOWN came after it) and its client process is running,
where the client process is, in this order:

1. ``unknown`` when no process holding the connection's socket was found: counted as
   **running** (conservative: a reader that cannot be seen is still a reader);
2. ``gone`` when every process found has exited (no ``/proc/<pid>``, a zombie, or a new process
   at the pid): **not running** (its socket is closing; the close follows within a moment);
3. ``stopped`` when every process found that still exists is in state ``T`` (stopped by a
   signal: SIGSTOP) or ``t`` (stopped by a tracer): **not running**, a frozen process consumes
   nothing. The sample's time is remembered as the client's last stop;
4. ``waking`` when it is not stopped at *t* but a sample at a time *s* with
   *t* - *s* < :data:`WAKING_SECONDS` (1.0 s) saw it stopped: **not running**. A thawed client
   gets one second after SIGCONT (measured from the last sample that saw it stopped, so from at
   most one sampling interval before the SIGCONT) to notice that it lost its lease and close
   its session;
5. ``running`` otherwise: **running**.

When several processes hold the socket (a fork), the client is running while any of them is
(``stopped`` needs all of them stopped). A stop shorter than one sampling interval can go
unseen: no sample saw it, so it does not start a waking period.

At each sample the server records, per mount, the current ``readers`` (reading sessions), the
most ever seen at one sample (``max_readers``) and ``sessions_seen``; and every **violation**:
a run of consecutive samples at which one mount had two or more reading sessions is one entry
``{"mount", "time", "monotonic", "last", "ended", "readers", "samples", "sessions"}``: wall
clock (``time.time()``) and ``CLOCK_MONOTONIC`` (``time.monotonic()``, the same clock in every
process of the host) of its first sample, wall clock of its last sample and of the first sample
without it (``ended``, ``None`` while it lasts), the most readers at one sample, the number of
samples, and every session that was reading during it (``session``, ``peer``, ``pids``,
``process``).

**How the test process sees it.** The server writes all this as JSON to a status file (a
temporary file of the :class:`RtspServer`, written whole and renamed over the old one): at every
sample at which anything but the times changed (a reader, a session's state or process, a count,
a violation), so the file is never behind the server's last sample but for its times, and at
least every :data:`HEARTBEAT_SECONDS` (1 s) otherwise, which refreshes the times (a write costs
some 25 times the rest of a sample). :meth:`RtspServer.readers`, :meth:`~RtspServer.max_readers`,
:meth:`~RtspServer.sessions_seen`, :meth:`~RtspServer.violations`,
:meth:`~RtspServer.sessions`, :meth:`~RtspServer.wait_readers` and
:meth:`~RtspServer.wait_sample` read it. Readers and sessions are those of the running server
process only: while it is down (stopped, killed, not yet respawned) every mount has 0 readers;
while it is frozen, they are those of its last sample before the freeze.

**Restarts keep the counts.** A server started again by the same :class:`RtspServer`
(:meth:`~RtspServer.restart`, a respawn, ``stop()`` then ``start()``) carries ``max_readers``,
``sessions_seen`` and ``violations`` over from the last status the previous process wrote
(``restarts`` counts the processes before it); ``readers`` start at 0, since every connection
died with the old process. A new :class:`RtspServer` starts from zero.

Needs the Debian packages ``gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base
gstreamer1.0-plugins-good gstreamer1.0-plugins-bad``; :func:`available` says whether they are there.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from lva_testkit.paths import REPO
from lva_testkit.ports import listening_ports

SYSTEM_PYTHON = "/usr/bin/python3"
_PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
    "from gi.repository import Gst; Gst.init(None);"
    "names = ('qtdemux', 'h264parse', 'rtph264pay', 'filesrc');"
    "missing = [n for n in names if not Gst.ElementFactory.find(n)];"
    "raise SystemExit(1 if missing else 0)"
)
_available: bool | None = None

SAMPLE_SECONDS = 0.05  # how often the server samples its readers
WAKING_SECONDS = 1.0  # how long after the last sample that saw it stopped a client is waking
STOPPED_STATES = frozenset("Tt")  # /proc/<pid>/stat states of a stopped process
MAX_VIOLATIONS = 1000  # violations kept; later ones are counted in violations_dropped
HEARTBEAT_SECONDS = 1.0  # the status is written at every change, and at least this often


def available() -> bool:
    """Whether GStreamer's RTSP server and the elements of the pipeline are installed."""
    global _available
    if _available is None:
        try:
            probe = subprocess.run([SYSTEM_PYTHON, "-c", _PROBE], capture_output=True, timeout=30)
            _available = probe.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _available = False
    return _available


def mount_names(mount: str = "/stream", mounts: int | str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The mounts a server serves: ``mount`` alone, ``/cam0`` ... for a count, or the names given."""
    if mounts is None:
        names: list[str] = [mount]
    elif isinstance(mounts, int):
        if mounts < 1:
            raise ValueError(f"mounts must be at least 1, not {mounts}")
        names = [f"/cam{i}" for i in range(mounts)]
    else:
        names = [mounts] if isinstance(mounts, str) else list(mounts)
    normal = tuple(_normal_mount(name) for name in names)
    if not normal:
        raise ValueError("no mounts")
    if len(set(normal)) != len(normal):
        raise ValueError(f"a mount is named twice: {normal}")
    return normal


def _normal_mount(name: str) -> str:
    stripped = name.strip("/")
    if not stripped:
        raise ValueError(f"not a mount path: {name!r}")
    return "/" + stripped


class RtspServer:
    """One RTSP server process serving ``clip`` (an H.264 MP4) at each of its mounts, looped.

    ``mounts``: how many cameras (``/cam0`` ...) or their paths; ``None`` serves ``mount`` alone.
    The server accounts for the readers of every mount (see the module's note): the methods
    :meth:`readers` ... :meth:`wait_readers` read what it found.
    """

    def __init__(
        self,
        clip: str | Path,
        log_path: str | Path | None = None,
        mount: str = "/stream",
        *,
        shared: bool = True,
        port: int = 0,
        respawn: bool = False,
        mounts: int | str | Sequence[str] | None = None,
    ) -> None:
        self.clip = Path(clip).resolve()
        self.mounts = mount_names(mount, mounts)
        self.mount = self.mounts[0]
        self.shared = shared
        self.port = port
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        # The server writes its reader accounting here; kept for the object's life, so that the
        # counts outlive a stop and a restart carries them over.
        self._status_dir = tempfile.TemporaryDirectory(prefix="rtsp-status-")
        self.status_path = Path(self._status_dir.name) / "status.json"
        # respawn: start again at the same address whenever the process dies by itself. For
        # tests whose camera is a witness, not the subject: GStreamer's RTSP server sometimes
        # aborts (gst_rtsp_media_get_rates: assertion failed) while clients set up, more often
        # on a loaded machine. Kills and freezes asked for through this object are not undone.
        self.respawns = 0  # respawned servers that came up listening
        self._respawn = respawn
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._watch: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The URL of the first mount (the only one, without ``mounts``)."""
        return self.url_of(self.mount)

    def url_of(self, mount: str) -> str:
        """The URL of one of the server's mounts (``"/cam3"`` or ``"cam3"``)."""
        name = _normal_mount(mount)
        if name not in self.mounts:
            raise KeyError(f"{mount!r} is not one of this server's mounts {self.mounts}")
        return f"rtsp://127.0.0.1:{self.port}{name}"

    @property
    def urls(self) -> dict[str, str]:
        """Every mount's URL, by mount, in the order of :attr:`mounts`."""
        return {name: self.url_of(name) for name in self.mounts}

    def start(self, timeout: float = 15.0) -> RtspServer:
        """Start the server; return once it accepts connections.

        The first time (``port`` 0) the server binds port 0 and writes the port it got to a file,
        which no other process can have taken first; a restart comes back at that port.
        """
        with self._lock:
            self._spawn(timeout)
        self._stopped.clear()
        if self._respawn and (self._watch is None or not self._watch.is_alive()):
            self._watch = threading.Thread(target=self._watch_process, name="rtsp-respawn", daemon=True)
            self._watch.start()
        return self

    def _watch_process(self) -> None:
        while not self._stopped.wait(0.2):
            with self._lock:
                if self._stopped.is_set() or self.proc is None or self.proc.poll() is None:
                    continue
                self._close_log()
                with contextlib.suppress(RuntimeError, TimeoutError):
                    self._spawn(15.0)
                    # Counted once it listens: whoever sees the count rise can connect at once
                    # (the new process is alive as soon as it is spawned, before it binds).
                    self.respawns += 1

    def _spawn(self, timeout: float) -> None:
        if not self.clip.is_file():
            raise FileNotFoundError(self.clip)
        # A restarted server comes back at the same address, as a rebooted camera does; the
        # first one binds port 0 and reports the port it got.
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - closed in stop()
        output = self._log if self._log is not None else subprocess.DEVNULL
        with tempfile.TemporaryDirectory(prefix="rtsp-port-") as scratch:
            port_file = Path(scratch) / "port"
            self.proc = subprocess.Popen(
                [
                    SYSTEM_PYTHON,
                    "-m",
                    "lva_testkit.rtsp_server",
                    str(self.clip),
                    "--port",
                    str(self.port),
                    "--port-file",
                    str(port_file),
                    "--status-file",
                    str(self.status_path),
                    *[arg for name in self.mounts for arg in ("--mount", name)],
                    *([] if self.shared else ["--media-per-client"]),
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=REPO,  # where ``-m`` finds the kit
                # Debian's Python must not pick up the venv's packages.
                env={
                    k: v
                    for k, v in os.environ.items()
                    if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
                },
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"RTSP server exited with {self.proc.returncode}; see {self.log_path}")
                # Written once the server is attached: it listens from then on.
                if port_file.is_file() and (text := port_file.read_text()).endswith("\n"):
                    bound = int(text)
                    # At a given port, the server's own socket: not one another process took.
                    if bound in listening_ports(self.proc.pid):
                        self.port = bound
                        return
                time.sleep(0.05)
        self._kill()
        raise TimeoutError(f"RTSP server not listening on port {self.port or '(any)'} after {timeout} s")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> None:
        """Kill and start again at the same address, as a rebooted camera comes back.

        The reader counts carry over (see the module's note); the readers start at 0.
        """
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets open and sends nothing, like a hung camera."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        """Kill the server (SIGKILL: a camera losing power says goodbye to no one). Idempotent."""
        self._stopped.set()  # before the kill: a respawning server stays down
        with self._lock:
            self._kill()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen process must be running to be reaped cleanly
            self.proc.kill()
            self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("RTSP server is not running")
        self.proc.send_signal(sig)

    # ---- reader accounting, as the server process last wrote it (see the module's note) ----

    def status(self) -> dict[str, Any]:
        """The server's last status, whole: ``{}`` before the first server wrote one.

        ``pid`` (of the process that wrote it), ``restarts``, ``sample`` (a counter), ``time``
        and ``monotonic`` (of the sample), ``mounts`` (``{mount: {"readers", "max_readers",
        "sessions_seen"}}``), ``sessions`` (the open ones), ``violations``,
        ``violations_dropped``. The status of a process that is no longer running is not the
        present: :meth:`readers` and :meth:`sessions` disregard it.
        """
        for _ in range(3):
            try:
                loaded = json.loads(self.status_path.read_text())
            except FileNotFoundError:
                return {}
            except (OSError, ValueError):  # never seen: the file is replaced whole
                time.sleep(0.01)
                continue
            return loaded if isinstance(loaded, dict) else {}
        return {}

    def _live_status(self) -> dict[str, Any] | None:
        """The status, if the running server process wrote it (else its readers are gone)."""
        status = self.status()
        proc = self.proc
        if proc is None or proc.poll() is not None or status.get("pid") != proc.pid:
            return None
        return status

    def _per_mount(self, status: dict[str, Any] | None, key: str) -> dict[str, int]:
        mounts = status.get("mounts", {}) if status else {}
        return {name: int(mounts.get(name, {}).get(key, 0)) for name in self.mounts}

    def readers(self) -> dict[str, int]:
        """Reading sessions per mount now (at the server's last sample; 0 while it is down)."""
        return self._per_mount(self._live_status(), "readers")

    def max_readers(self) -> dict[str, int]:
        """The most reading sessions one sample saw, per mount, since this object's first start."""
        return self._per_mount(self.status(), "max_readers")

    def sessions_seen(self) -> dict[str, int]:
        """RTSP sessions ever set up, per mount, since this object's first start."""
        return self._per_mount(self.status(), "sessions_seen")

    def violations(self) -> list[dict[str, Any]]:
        """Every run of samples at which one mount had two or more reading sessions, oldest first."""
        violations = self.status().get("violations", [])
        return list(violations) if isinstance(violations, list) else []

    def sessions(self, mount: str | None = None) -> list[dict[str, Any]]:
        """The open sessions (of ``mount``, or all): ``mount``, ``session``, ``peer``, ``pids``,
        ``playing``, ``process`` (unknown, gone, stopped, waking, running), ``reading``,
        ``stopped_at`` (monotonic time of the last sample that saw the client stopped)."""
        status = self._live_status()
        sessions = status.get("sessions", []) if status else []
        name = None if mount is None else _normal_mount(mount)
        return [s for s in sessions if name is None or s.get("mount") == name]

    def wait_sample(self, timeout: float = 5.0) -> dict[str, Any]:
        """The first status the running server writes after this call.

        Written at the next sample that changes anything, else at the next heartbeat (at most
        :data:`HEARTBEAT_SECONDS` later): either way the server's state after the call.
        """
        since = time.monotonic()
        deadline = since + timeout
        while True:
            status = self._live_status()
            if status is not None and float(status.get("monotonic", 0.0)) > since:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"no sample of the RTSP server in {timeout} s (alive: {self.alive})")
            time.sleep(0.01)

    def wait_readers(self, mount: str, n: int, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until ``mount`` has exactly ``n`` reading sessions; return that status.

        Raises TimeoutError, naming the sessions of the mount, if it does not within ``timeout``.
        """
        name = _normal_mount(mount)
        if name not in self.mounts:
            raise KeyError(f"{mount!r} is not one of this server's mounts {self.mounts}")
        deadline = time.monotonic() + timeout
        while True:
            status = self._live_status()
            if self._per_mount(status, "readers")[name] == n and status is not None:
                return status
            if time.monotonic() > deadline:
                seen = self._per_mount(status, "readers")[name]
                raise TimeoutError(
                    f"{name} has {seen} readers, not {n}, after {timeout} s; sessions: {self.sessions(name)}"
                )
            time.sleep(0.01)

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- reader accounting (stdlib only: runs in the server process) -------------------------------


def _proc_address(field: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """An address of /proc/net/tcp{,6}: hex of the address in host byte order words, hex port."""
    text, port = field.rsplit(":", 1)
    words = [struct.pack("<I", int(text[i : i + 8], 16)) for i in range(0, len(text), 8)]
    raw = b"".join(words)
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    if len(raw) == 4:
        address = ipaddress.IPv4Address(raw)
    else:
        address = ipaddress.IPv6Address(raw)
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    return address, int(port, 16)


Address = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


def tcp_sockets() -> Iterator[tuple[str, Address, Address]]:
    """(inode, local address, remote address) of every held TCP socket of this network namespace,
    from /proc/net/tcp and tcp6 (inode 0, TIME_WAIT, is held by nobody and left out)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[9] == "0":
                continue
            try:
                yield fields[9], _proc_address(fields[1]), _proc_address(fields[2])
            except ValueError:
                continue


def socket_inode(local_ip: str, local_port: int, remote_port: int) -> str | None:
    """The inode of the TCP socket at ``local_ip:local_port`` connected to ``remote_port``.

    The client's end of a connection to the server: its local address is the peer the server
    sees, its remote port the server's port.
    """
    want = ipaddress.ip_address(local_ip)
    if isinstance(want, ipaddress.IPv6Address) and want.ipv4_mapped is not None:
        want = want.ipv4_mapped
    for inode, local, remote in tcp_sockets():
        if local == (want, local_port) and remote[1] == remote_port:
            return inode
    return None


def socket_holders(inode: str) -> list[int]:
    """The processes (other than this one) with a file descriptor on socket ``inode``."""
    target = f"socket:[{inode}]"
    me = os.getpid()
    holders = []
    with os.scandir("/proc") as entries:
        pids = [int(e.name) for e in entries if e.name.isdigit()]
    for pid in pids:
        if pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or not readable
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    holders.append(pid)
                    break
            except OSError:
                continue
    return holders


def process_state(pid: int) -> tuple[str, int] | None:
    """``(state, start time)`` of a process from /proc/<pid>/stat (fields 3 and 22); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command (field 2) is in parentheses and may hold anything, parentheses included.
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


class _Client:
    """One client connection: its peer, the processes holding its socket, their last state."""

    def __init__(self, ip: str, port: int) -> None:
        self.ip = ip
        self.port = port
        self.peer = f"{ip}:{port}"
        self.holders: dict[int, int] = {}  # pid -> start time: a pid reused later is not the client
        self.resolved = False
        self.looked_up = -math.inf  # monotonic time of the last lookup
        self.process = "unknown"  # unknown, gone, stopped, waking, running
        self.stopped_at: float | None = None  # monotonic time of the last sample that saw it stopped

    @property
    def running(self) -> bool:
        return self.process in ("unknown", "running")


class _Session:
    def __init__(self, sid: str, mount: str, client: _Client) -> None:
        self.sid = sid
        self.mount = mount
        self.client = client
        self.playing = False

    @property
    def reading(self) -> bool:
        return self.playing and self.client.running

    def describe(self) -> dict[str, Any]:
        return {
            "mount": self.mount,
            "session": self.sid,
            "peer": self.client.peer,
            "pids": sorted(self.client.holders),
            "playing": self.playing,
            "process": self.client.process,
            "reading": self.reading,
            "stopped_at": self.client.stopped_at,
        }


class ReaderAccounting:
    """Sessions per mount, the rule for 'reading', the violations, the status file.

    Pure standard library and independent of GStreamer: the server's signal handlers call
    :meth:`connected`, :meth:`setup`, :meth:`play`, :meth:`pause`, :meth:`teardown`,
    :meth:`removed` and :meth:`closed`, and a timeout calls :meth:`sample`.
    """

    def __init__(
        self,
        mounts: Sequence[str],
        server_port: int = 0,
        status_file: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        lookup: Callable[[_Client, int], None] | None = None,
        state_of: Callable[[int], tuple[str, int] | None] = process_state,
    ) -> None:
        self.mounts = list(mounts)
        self.server_port = server_port
        self.status_file = Path(status_file) if status_file else None
        self._clock = clock
        self._lookup = lookup or _find_holders
        self._state_of = state_of
        self._lock = threading.RLock()
        self._clients: dict[int, _Client] = {}
        self._next_client = 0
        self._sessions: dict[str, _Session] = {}
        self.readers = dict.fromkeys(self.mounts, 0)
        self.max_readers = dict.fromkeys(self.mounts, 0)
        self.sessions_seen = dict.fromkeys(self.mounts, 0)
        self.violations: list[dict[str, Any]] = []
        self.violations_dropped = 0
        self._open: dict[str, dict[str, Any]] = {}  # mount -> the violation that lasts
        self.samples = 0
        self.restarts = 0
        self._sampled_at = 0.0
        self._written: tuple[Any, ...] | None = None  # what the status file last said
        self._written_at = -math.inf
        self._carry_over()

    def _carry_over(self) -> None:
        """Take over the counts of the previous server of the same status file (a restart)."""
        if self.status_file is None:
            return
        try:
            previous = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(previous, dict):
            return
        self.restarts = int(previous.get("restarts", 0)) + 1
        for name, counts in previous.get("mounts", {}).items():
            if name in self.max_readers:
                self.max_readers[name] = int(counts.get("max_readers", 0))
                self.sessions_seen[name] = int(counts.get("sessions_seen", 0))
        for violation in previous.get("violations", []):
            if violation.get("ended") is None:  # it ended with the previous process
                violation["ended"] = violation.get("last")
            self.violations.append(violation)
        self.violations_dropped = int(previous.get("violations_dropped", 0))

    def mount_of(self, path: str | None) -> str | None:
        """The mount a request's path is on: the longest mount that is the path or a prefix of it."""
        if not path:
            return None
        best = None
        for name in self.mounts:
            if (path == name or path.startswith(name + "/")) and (best is None or len(name) > len(best)):
                best = name
        return best

    # ---- events -------------------------------------------------------------------------------

    def connected(self, ip: str, port: int) -> int:
        """A client connected from ``ip:port``; returns its key for the later events."""
        with self._lock:
            key = self._next_client
            self._next_client += 1
            client = _Client(ip, port)
            self._clients[key] = client
            self._resolve(client)
            return key

    def setup(self, key: int, sid: str | None, path: str | None) -> None:
        with self._lock:
            self._session(key, sid, path)
            self.sample()

    def play(self, key: int, sid: str | None, path: str | None) -> None:
        with self._lock:
            session = self._session(key, sid, path)
            if session is not None:
                session.playing = True
            self.sample()

    def pause(self, key: int, sid: str | None) -> None:
        with self._lock:
            if sid in self._sessions:
                self._sessions[sid].playing = False
            self.sample()

    def teardown(self, key: int, sid: str | None) -> None:
        self.removed(sid)

    def removed(self, sid: str | None) -> None:
        """A session ended: torn down, or removed from the pool."""
        with self._lock:
            if sid is not None and self._sessions.pop(sid, None) is not None:
                self.sample()

    def closed(self, key: int) -> None:
        """A client connection closed: its sessions end with it."""
        with self._lock:
            client = self._clients.pop(key, None)
            if client is None:
                return
            for sid in [sid for sid, s in self._sessions.items() if s.client is client]:
                del self._sessions[sid]
            self.sample()

    def _session(self, key: int, sid: str | None, path: str | None) -> _Session | None:
        if sid is None:
            return None
        if sid in self._sessions:
            return self._sessions[sid]
        client, mount = self._clients.get(key), self.mount_of(path)
        if client is None or mount is None:
            return None
        session = self._sessions[sid] = _Session(sid, mount, client)
        self.sessions_seen[mount] += 1
        return session

    def _resolve(self, client: _Client) -> None:
        client.looked_up = self._clock()
        self._lookup(client, self.server_port)

    # ---- the sample ---------------------------------------------------------------------------

    def sample(self) -> dict[str, Any]:
        """Read the clients' process states, apply the rule, record readers and violations."""
        with self._lock:
            now = self._clock()
            wall = time.time()
            states: dict[int, tuple[str, int] | None] = {}
            for client in self._clients.values():
                if not client.resolved and now - client.looked_up >= 1.0:
                    self._resolve(client)
                self._judge(client, now, states)
            reading: dict[str, list[_Session]] = {name: [] for name in self.mounts}
            for session in self._sessions.values():
                if session.reading:
                    reading[session.mount].append(session)
            for name, sessions in reading.items():
                self.readers[name] = len(sessions)
                self.max_readers[name] = max(self.max_readers[name], len(sessions))
                self._check(name, sessions, now, wall)
            self.samples += 1
            self._sampled_at = now
            status = self.status(wall)
            # A write costs some 25 times the rest of the sample: only what changed, and a
            # heartbeat that refreshes the times (a lasting violation's "last", "stopped_at").
            said = self._what_it_says()
            if said != self._written or now - self._written_at >= HEARTBEAT_SECONDS:
                self._write(status)
                self._written, self._written_at = said, now
            return status

    def _what_it_says(self) -> tuple[Any, ...]:
        """The status but its times: what a change of makes the status file be written at once."""
        return (
            tuple(self.readers.values()),
            tuple(self.max_readers.values()),
            tuple(self.sessions_seen.values()),
            tuple(
                (s.sid, s.playing, s.client.process, tuple(s.client.holders)) for s in self._sessions.values()
            ),
            len(self.violations),
            self.violations_dropped,
            tuple((v["mount"], v["readers"], len(v["sessions"])) for v in self._open.values()),
        )

    def _judge(self, client: _Client, now: float, states: dict[int, tuple[str, int] | None]) -> None:
        """The rule (see the module's note), for one client at the sample at ``now``."""
        if not client.resolved:
            client.process = "unknown"
            return
        live = []
        for pid, started in client.holders.items():
            if pid not in states:
                states[pid] = self._state_of(pid)
            state = states[pid]
            if state is None or state[1] != started or state[0] in ("Z", "X", "x"):
                continue  # exited, or the pid is another process's now
            live.append(state[0])
        if not live:
            client.process = "gone"
        elif all(state in STOPPED_STATES for state in live):
            client.process = "stopped"
            client.stopped_at = now
        elif client.stopped_at is not None and now - client.stopped_at < WAKING_SECONDS:
            client.process = "waking"
        else:
            client.process = "running"

    def _check(self, mount: str, sessions: list[_Session], now: float, wall: float) -> None:
        current = self._open.get(mount)
        if len(sessions) < 2:
            if current is not None:
                current["ended"] = wall
                del self._open[mount]
            return
        described = [
            {
                "session": s.sid,
                "peer": s.client.peer,
                "pids": sorted(s.client.holders),
                "process": s.client.process,
            }
            for s in sessions
        ]
        if current is None:
            current = {
                "mount": mount,
                "time": wall,
                "monotonic": now,
                "last": wall,
                "ended": None,
                "readers": len(sessions),
                "samples": 1,
                "sessions": described,
            }
            if len(self.violations) < MAX_VIOLATIONS:
                self.violations.append(current)
            else:
                self.violations_dropped += 1
            self._open[mount] = current
            return
        current["last"] = wall
        current["samples"] += 1
        current["readers"] = max(current["readers"], len(sessions))
        known = {s["session"] for s in current["sessions"]}
        current["sessions"].extend(s for s in described if s["session"] not in known)

    def status(self, wall: float | None = None) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "restarts": self.restarts,
            "sample": self.samples,
            "time": time.time() if wall is None else wall,
            "monotonic": self._sampled_at,
            "mounts": {
                name: {
                    "readers": self.readers[name],
                    "max_readers": self.max_readers[name],
                    "sessions_seen": self.sessions_seen[name],
                }
                for name in self.mounts
            },
            "sessions": [s.describe() for s in self._sessions.values()],
            "violations": self.violations,
            "violations_dropped": self.violations_dropped,
        }

    def _write(self, status: dict[str, Any]) -> None:
        if self.status_file is None:
            return
        # Written whole and then renamed: the test process never reads half a status.
        partial = self.status_file.with_name(f"{self.status_file.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(status, separators=(",", ":")))
        partial.replace(self.status_file)


def _find_holders(client: _Client, server_port: int) -> None:
    """The processes holding the client's end of its connection (see the module's note)."""
    inode = socket_inode(client.ip, client.port, server_port) if client.port else None
    holders = socket_holders(inode) if inode is not None else []
    for pid in holders:
        state = process_state(pid)
        if state is not None:
            client.holders[pid] = state[1]
    client.resolved = bool(client.holders)


# ---- the server process (runs under /usr/bin/python3 with gi) ----------------------------------


def _serve(
    clip: str, port: int, mounts: Sequence[str], shared: bool, port_file: str | None, status_file: str | None
) -> None:  # pragma: no cover - runs in the child
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, GObject, Gst, GstRtspServer

    Gst.init(None)

    def seek_to_start(media: Any, flags: Any) -> None:
        # Straight to the demuxer: a seek sent to the pipeline goes to the sinks and does not
        # make it back through the RTP session to qtdemux.
        demux = media.get_element().get_by_name("demux")
        flags |= Gst.SeekFlags.SEGMENT
        if not demux.seek(1.0, Gst.Format.TIME, flags, Gst.SeekType.SET, 0, Gst.SeekType.NONE, -1):
            print("segment seek failed", flush=True)

    class LoopingMedia(GstRtspServer.RTSPMedia):  # type: ignore[misc]
        """Loops the file with segment seeks, so that it never reaches EOS.

        EOS would make the RTP session send BYE and the client see the end of the stream. A
        segment seek ends in SEGMENT_DONE instead, and a non-flushing seek back to the start
        keeps running time, so RTP timestamps keep increasing across the loop (a flushing seek
        would restart them).
        """

        def do_prepared(self) -> None:
            # Prerolled in PAUSED, before PLAY: nothing has been sent yet, so flushing is safe.
            seek_to_start(self, Gst.SeekFlags.FLUSH)

        def do_handle_message(self, message: Any) -> bool:
            if message.type == Gst.MessageType.SEGMENT_DONE:
                seek_to_start(self, Gst.SeekFlags(0))
                return True
            return bool(GstRtspServer.RTSPMedia.do_handle_message(self, message))

    def not_seekable(pad: Any, info: Any) -> Any:
        query = info.get_query()
        if query is not None and query.type == Gst.QueryType.SEEKING:
            query.set_seeking(Gst.Format.TIME, False, 0, -1)
            return Gst.PadProbeReturn.HANDLED
        return Gst.PadProbeReturn.OK

    def as_a_camera(factory: Any, media: Any) -> None:
        # A camera cannot seek, and the loop above depends on nobody else seeking: a client
        # that joins a shared media a moment after another sends PLAY with a Range, and the
        # server's flushing seek to it replaced the segment seek, so the file ended (EOS, BYE)
        # at its next end for every client. Answering "not seekable" stops the server seeking.
        parse = media.get_element().get_by_name("parse")
        parse.get_static_pad("src").add_probe(Gst.PadProbeType.QUERY_UPSTREAM, not_seekable)

    GObject.type_register(LoopingMedia)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    location = clip.replace("\\", "\\\\").replace('"', '\\"')
    for mount in mounts:
        # A factory per mount: no two mounts share a media.
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(
            f'( filesrc location="{location}" ! qtdemux name=demux ! h264parse name=parse config-interval=-1 '
            "! rtph264pay name=pay0 pt=96 )"
        )
        factory.set_shared(shared)
        factory.set_media_gtype(LoopingMedia.__gtype__)
        factory.connect("media-constructed", as_a_camera)
        server.get_mount_points().add_factory(mount, factory)

    accounting = ReaderAccounting(mounts, status_file=status_file)

    def guarded(action: Callable[..., object]) -> Callable[..., None]:
        # A mistake in the accounting must not take the camera down with it.
        def run(*args: Any) -> None:
            try:
                action(*args)
            except Exception:  # logged, and the camera goes on
                traceback.print_exc()
                sys.stdout.flush()

        return run

    def sid_of(ctx: Any) -> str | None:
        session = getattr(ctx, "session", None)
        return None if session is None else str(session.get_sessionid())

    def path_of(ctx: Any) -> str | None:
        uri = getattr(ctx, "uri", None)
        return None if uri is None else str(uri.abspath)

    def on_client(_server: Any, client: Any) -> None:
        ip, peer_port = "", 0
        connection = client.get_connection()
        with contextlib.suppress(Exception):
            ip = str(connection.get_ip())
            remote = connection.get_read_socket().get_remote_address()
            ip, peer_port = remote.get_address().to_string(), int(remote.get_port())
        key = accounting.connected(ip, peer_port)
        # The handlers take the client as an argument and hold no reference to it.
        client.connect(
            "setup-request", guarded(lambda _c, ctx: accounting.setup(key, sid_of(ctx), path_of(ctx)))
        )
        client.connect(
            "play-request", guarded(lambda _c, ctx: accounting.play(key, sid_of(ctx), path_of(ctx)))
        )
        client.connect("pause-request", guarded(lambda _c, ctx: accounting.pause(key, sid_of(ctx))))
        client.connect("teardown-request", guarded(lambda _c, ctx: accounting.teardown(key, sid_of(ctx))))
        client.connect("closed", guarded(lambda _c: accounting.closed(key)))

    server.connect("client-connected", guarded(on_client))
    server.get_session_pool().connect(
        "session-removed", guarded(lambda _pool, session: accounting.removed(str(session.get_sessionid())))
    )

    def tick() -> bool:
        guarded(accounting.sample)()
        return True  # a GLib timeout that returns False is removed

    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    bound = server.get_bound_port()  # the port it got, when asked for port 0
    accounting.server_port = bound
    accounting.sample()  # the first status, before anyone is told the port
    GLib.timeout_add(round(SAMPLE_SECONDS * 1000), tick)
    if port_file:
        # Written whole and then renamed: the parent never reads half a number.
        partial = Path(port_file + ".partial")
        partial.write_text(f"{bound}\n")
        partial.rename(port_file)
    for mount in mounts:
        print(f"serving {clip} at rtsp://127.0.0.1:{bound}{mount}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve an H.264 MP4 over RTSP, looped.")
    parser.add_argument("clip")
    parser.add_argument("--port", type=int, default=8554, help="0: any free port (see --port-file)")
    parser.add_argument("--port-file", help="write the bound port to this file once listening")
    parser.add_argument(
        "--mount", action="append", help="a mount to serve (repeat for more; default /stream)"
    )
    parser.add_argument("--status-file", help="write the reader accounting here, as JSON")
    parser.add_argument("--media-per-client", action="store_true", help="a media per client (out of phase)")
    args = parser.parse_args()
    _serve(
        args.clip,
        args.port,
        mount_names(mounts=args.mount) if args.mount else ("/stream",),
        shared=not args.media_per_client,
        port_file=args.port_file,
        status_file=args.status_file,
    )
    sys.exit(0)
