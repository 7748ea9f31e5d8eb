"""Live 720p25 cameras for the benchmarks: one GStreamer RTSP server, a separate media per client.

The test fixture (``tests/rtsp_server.py``) shares one media between every client, like a single
camera's encoder: all clients then receive the same frame at the same instant. For capacity and
latency that would flatter the core, since frames of N "cameras" arriving in lockstep batch
perfectly. Real cameras are not in step, so here every client gets a media of its own
(``set_shared(False)``), started when it connects: N streams created one after another are out
of phase, as N cameras are. Each media loops the file with segment seeks, exactly as the
fixture does (see its docstring), so a stream stays live for as long as the benchmark needs.

Like the fixture, this file has two halves: :class:`RtspCameras` (imported by the suite, under
the venv's Python) starts this same file as a script under Debian's ``/usr/bin/python3``, which
has PyGObject and GStreamer.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

SYSTEM_PYTHON = "/usr/bin/python3"


class RtspCameras:
    """An RTSP server process serving ``clip`` at :attr:`url`, looped, one media per client."""

    def __init__(self, clip: Path, port: int, log_path: Path) -> None:
        self.clip = clip.resolve()
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/camera"

    def start(self, timeout: float = 15.0) -> RtspCameras:
        import socket

        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(Path(__file__).resolve()), str(self.clip), "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Debian's Python must not pick up the venv's packages.
            env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"RTSP server exited with {self.proc.returncode}; see {self.log_path}")
            with socket.socket() as sock:
                sock.settimeout(0.2)
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"RTSP server not listening on {self.port} after {timeout} s")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> None:
        """Start again at the same address, as a rebooted camera comes back.

        GStreamer's RTSP server has been seen to abort (an assertion in
        ``gst_rtsp_media_get_rates``) when a burst of clients connects while the medias of a
        previous burst are still being torn down; the suite restarts it rather than lose a run.
        """
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


def _serve(clip: str, port: int) -> None:  # pragma: no cover - runs in the child
    import gi  # type: ignore[import-not-found]

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, GObject, Gst, GstRtspServer  # type: ignore[import-not-found]

    Gst.init(None)

    def seek_to_start(media: Any, flags: Any) -> None:
        demux = media.get_element().get_by_name("demux")
        flags |= Gst.SeekFlags.SEGMENT
        if not demux.seek(1.0, Gst.Format.TIME, flags, Gst.SeekType.SET, 0, Gst.SeekType.NONE, -1):
            print("segment seek failed", flush=True)

    class LoopingMedia(GstRtspServer.RTSPMedia):  # type: ignore[misc]
        def do_prepared(self) -> None:
            seek_to_start(self, Gst.SeekFlags.FLUSH)

        def do_handle_message(self, message: Any) -> bool:
            if message.type == Gst.MessageType.SEGMENT_DONE:
                seek_to_start(self, Gst.SeekFlags(0))
                return True
            return bool(GstRtspServer.RTSPMedia.do_handle_message(self, message))

    GObject.type_register(LoopingMedia)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    location = clip.replace("\\", "\\\\").replace('"', '\\"')
    factory.set_launch(
        f'( filesrc location="{location}" ! qtdemux name=demux ! h264parse config-interval=-1 '
        "! rtph264pay name=pay0 pt=96 )"
    )
    factory.set_shared(False)  # a media per client: cameras out of phase (module docstring)
    factory.set_media_gtype(LoopingMedia.__gtype__)
    server.get_mount_points().add_factory("/camera", factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    print(f"serving {clip} at rtsp://127.0.0.1:{port}/camera", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve an H.264 MP4 over RTSP, looped, a media per client.")
    parser.add_argument("clip")
    parser.add_argument("--port", type=int, default=8554)
    args = parser.parse_args()
    _serve(args.clip, args.port)
    sys.exit(0)
