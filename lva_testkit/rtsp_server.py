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

Needs the Debian packages ``gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base
gstreamer1.0-plugins-good gstreamer1.0-plugins-bad``; :func:`available` says whether they are there.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
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


class RtspServer:
    """One RTSP server process serving ``clip`` (an H.264 MP4) at :attr:`url`, looped."""

    def __init__(
        self,
        clip: str | Path,
        log_path: str | Path | None = None,
        mount: str = "/stream",
        *,
        shared: bool = True,
        port: int = 0,
        respawn: bool = False,
    ) -> None:
        self.clip = Path(clip).resolve()
        self.mount = mount
        self.shared = shared
        self.port = port
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
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
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

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
                    "--mount",
                    self.mount,
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
        """Kill and start again at the same address, as a rebooted camera comes back."""
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

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- the server process (runs under /usr/bin/python3 with gi) ----------------------------------


def _serve(
    clip: str, port: int, mount: str, shared: bool, port_file: str | None
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
    factory = GstRtspServer.RTSPMediaFactory()
    location = clip.replace("\\", "\\\\").replace('"', '\\"')
    factory.set_launch(
        f'( filesrc location="{location}" ! qtdemux name=demux ! h264parse name=parse config-interval=-1 '
        "! rtph264pay name=pay0 pt=96 )"
    )
    factory.set_shared(shared)
    factory.set_media_gtype(LoopingMedia.__gtype__)
    factory.connect("media-constructed", as_a_camera)
    server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    bound = server.get_bound_port()  # the port it got, when asked for port 0
    if port_file:
        # Written whole and then renamed: the parent never reads half a number.
        partial = Path(port_file + ".partial")
        partial.write_text(f"{bound}\n")
        partial.rename(port_file)
    print(f"serving {clip} at rtsp://127.0.0.1:{bound}{mount}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve an H.264 MP4 over RTSP, looped.")
    parser.add_argument("clip")
    parser.add_argument("--port", type=int, default=8554, help="0: any free port (see --port-file)")
    parser.add_argument("--port-file", help="write the bound port to this file once listening")
    parser.add_argument("--mount", default="/stream")
    parser.add_argument("--media-per-client", action="store_true", help="a media per client (out of phase)")
    args = parser.parse_args()
    _serve(args.clip, args.port, args.mount, shared=not args.media_per_client, port_file=args.port_file)
    sys.exit(0)
