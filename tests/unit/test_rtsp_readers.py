"""The tests' RTSP camera counts the readers of each of its mounts (lva_testkit.rtsp_server).

Real servers, real PyAV clients (in threads of this process, or in a child process where it
must be frozen), and the accounting's rule alone on a fake clock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from lva_testkit import rtsp_server
from lva_testkit.clips import clip
from lva_testkit.rtsp_server import WAKING_SECONDS, ReaderAccounting, RtspServer, mount_names

WAIT = 15.0  # generous: a loaded two-core machine


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip(tmp_path_factory.mktemp("readers"), "readers.mp4", seconds=2.0, size=(160, 120))


def require_rtsp() -> None:
    if not rtsp_server.available():
        if os.environ.get("LVA_SKIP_RTSP_TESTS") == "1":
            pytest.skip("GStreamer's RTSP server is not installed")
        pytest.fail(
            "GStreamer's RTSP server is missing: lva_testkit/rtsp_server.py says what to install "
            "(or set LVA_SKIP_RTSP_TESTS=1)"
        )


@pytest.fixture
def cameras(camera_clip: Path, tmp_path: Path) -> Iterator[RtspServer]:
    require_rtsp()
    server = RtspServer(camera_clip, tmp_path / "rtsp.log", mounts=3).start()
    yield server
    server.stop()


class Reader:
    """A PyAV client in a thread of this process, decoding until closed, as the core reads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.frames = 0
        self.error: BaseException | None = None
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reader {url}", daemon=True)

    def __enter__(self) -> Reader:
        self._thread.start()
        assert self._first.wait(WAIT), f"no frame from {self.url}: {self.error}"
        return self

    def _run(self) -> None:
        try:
            with av.open(self.url, options={"rtsp_transport": "tcp"}, timeout=5) as container:
                for _ in container.decode(video=0):
                    self.frames += 1
                    self._first.set()
                    if self._stop.is_set():
                        break
        except BaseException as error:  # reported by __enter__ and close
            self.error = error
            self._first.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive() and self.error is None, self.error

    def __exit__(self, *exc: object) -> None:
        self.close()


# A reader in a process of its own, to be frozen: decodes until killed.
CHILD_READER = """
import sys, av
with av.open(sys.argv[1], options={"rtsp_transport": "tcp"}, timeout=5) as container:
    for _ in container.decode(video=0):
        pass
"""


def only_session(camera: RtspServer, mount: str) -> dict[str, Any]:
    [session] = camera.sessions(mount)
    return session


# ---- the real server -----------------------------------------------------------------------------


def test_one_client_is_one_reader(cameras: RtspServer) -> None:
    with Reader(cameras.url_of("/cam0")):
        status = cameras.wait_readers("/cam0", 1, WAIT)
        [session] = [s for s in status["sessions"] if s["mount"] == "/cam0"]
        # The session's process was found: this one.
        assert session["pids"] == [os.getpid()] and session["process"] == "running", session
        assert session["peer"].startswith("127.0.0.1:")
        assert cameras.readers() == {"/cam0": 1, "/cam1": 0, "/cam2": 0}
        cameras.wait_sample(WAIT)  # a sample after the reader had long been reading
    assert cameras.max_readers() == {"/cam0": 1, "/cam1": 0, "/cam2": 0}
    assert cameras.sessions_seen()["/cam0"] == 1
    assert cameras.violations() == []


def test_a_client_that_closes_stops_reading(cameras: RtspServer) -> None:
    reader = Reader(cameras.url_of("cam2")).__enter__()
    cameras.wait_readers("/cam2", 1, WAIT)
    reader.close()
    cameras.wait_readers("/cam2", 0, WAIT)
    assert cameras.sessions("/cam2") == []  # ended, not merely idle
    assert cameras.max_readers()["/cam2"] == 1 and cameras.sessions_seen()["/cam2"] == 1
    assert cameras.violations() == []


def test_two_clients_of_one_mount_are_a_violation(cameras: RtspServer) -> None:
    with Reader(cameras.url_of("/cam1")), Reader(cameras.url_of("/cam1")):
        cameras.wait_readers("/cam1", 2, WAIT)
        peers = {s["peer"] for s in cameras.sessions("/cam1")}
    cameras.wait_readers("/cam1", 0, WAIT)
    [violation] = cameras.violations()
    assert violation["mount"] == "/cam1" and violation["readers"] == 2
    # Both sessions, each with its own connection, and the process they came from.
    assert {s["peer"] for s in violation["sessions"]} == peers and len(peers) == 2
    assert all(s["pids"] == [os.getpid()] for s in violation["sessions"])
    assert violation["ended"] is not None and violation["ended"] >= violation["time"]
    assert cameras.max_readers()["/cam1"] == 2 and cameras.sessions_seen()["/cam1"] == 2


def test_clients_of_two_mounts_are_no_violation(cameras: RtspServer) -> None:
    with Reader(cameras.url_of("/cam0")), Reader(cameras.url_of("/cam1")):
        cameras.wait_readers("/cam0", 1, WAIT)
        cameras.wait_readers("/cam1", 1, WAIT)
        status = cameras.wait_sample(WAIT)  # both read at this sample
        assert {m: c["readers"] for m, c in status["mounts"].items()} == {"/cam0": 1, "/cam1": 1, "/cam2": 0}
    assert cameras.violations() == []
    assert cameras.max_readers() == {"/cam0": 1, "/cam1": 1, "/cam2": 0}


def test_a_frozen_client_is_not_reading_and_wakes_a_second_after_it_thaws(cameras: RtspServer) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD_READER, cameras.url_of("/cam0")])
    try:
        cameras.wait_readers("/cam0", 1, WAIT)
        assert only_session(cameras, "/cam0")["pids"] == [child.pid]
        child.send_signal(signal.SIGSTOP)
        cameras.wait_readers("/cam0", 0, WAIT)
        frozen = only_session(cameras, "/cam0")  # still open, still playing: frozen, not gone
        assert frozen["playing"] and frozen["process"] == "stopped" and not frozen["reading"], frozen
        child.send_signal(signal.SIGCONT)
        thawed_at = time.monotonic()
        # Every sample from the SIGCONT until it reads again: waking, never reading before
        # WAKING_SECONDS after the last sample that saw it stopped.
        first = cameras.wait_sample(WAIT)
        [session] = [s for s in first["sessions"] if s["mount"] == "/cam0"]
        assert session["process"] == "waking" and not session["reading"], session
        deadline = thawed_at + WAIT
        while True:
            status = cameras.wait_sample(WAIT)
            [session] = [s for s in status["sessions"] if s["mount"] == "/cam0"]
            if session["reading"]:
                break
            assert session["process"] == "waking" and status["mounts"]["/cam0"]["readers"] == 0, session
            assert time.monotonic() < deadline, f"not reading again {WAIT} s after SIGCONT: {session}"
        assert session["process"] == "running" and status["mounts"]["/cam0"]["readers"] == 1
        assert session["stopped_at"] is not None
        assert status["monotonic"] - session["stopped_at"] >= WAKING_SECONDS
        assert session["stopped_at"] <= thawed_at  # the last stop was seen before the SIGCONT
        assert cameras.violations() == []
    finally:
        child.send_signal(signal.SIGCONT)
        child.kill()
        child.wait(WAIT)
    cameras.wait_readers("/cam0", 0, WAIT)  # a killed client's connection closes with it


def test_a_restart_keeps_the_counts_and_drops_the_readers(cameras: RtspServer) -> None:
    with Reader(cameras.url_of("/cam2")), Reader(cameras.url_of("/cam2")):
        cameras.wait_readers("/cam2", 2, WAIT)
        cameras.restart()  # the readers' connections die with the old process
        assert cameras.readers() == {"/cam0": 0, "/cam1": 0, "/cam2": 0}
        status = cameras.wait_sample(WAIT)
        assert cameras.proc is not None and status["restarts"] == 1 and status["pid"] == cameras.proc.pid
        [violation] = cameras.violations()
        assert violation["mount"] == "/cam2" and violation["ended"] is not None
        assert cameras.max_readers()["/cam2"] == 2 and cameras.sessions_seen()["/cam2"] == 2
    cameras.stop()
    # Down: nobody reads, the counts remain.
    assert cameras.readers()["/cam2"] == 0 and cameras.max_readers()["/cam2"] == 2


def test_one_mount_by_default(camera_clip: Path) -> None:
    camera = RtspServer(camera_clip, port=8554)
    assert camera.mounts == ("/stream",) and camera.url == "rtsp://127.0.0.1:8554/stream"
    assert camera.urls == {"/stream": camera.url}
    assert RtspServer(camera_clip, None, "/camera").url.endswith(":0/camera")
    many = RtspServer(camera_clip, mounts=24)
    assert many.mounts == tuple(f"/cam{i}" for i in range(24)) and many.url == many.url_of("/cam0")
    assert many.url_of("cam23").endswith("/cam23")
    with pytest.raises(KeyError):
        many.url_of("/cam24")
    assert mount_names(mounts=["a", "/b/"]) == ("/a", "/b")
    with pytest.raises(ValueError):
        mount_names(mounts=["/a", "a"])


# ---- the rule alone, on a fake clock -------------------------------------------------------------


class Fake:
    """Processes whose state the test sets, and a clock it moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.states: dict[int, tuple[str, int] | None] = {}
        self.holders: dict[int, list[int]] = {}  # peer port -> pids

    def lookup(self, client: Any, server_port: int) -> None:
        for pid in self.holders.get(client.port, []):
            state = self.states.get(pid)
            if state is not None:
                client.holders[pid] = state[1]
        client.resolved = bool(client.holders)

    def accounting(self) -> ReaderAccounting:
        return ReaderAccounting(
            ["/cam0", "/cam1"], clock=lambda: self.now, lookup=self.lookup, state_of=self.states.get
        )


def playing(accounting: ReaderAccounting, port: int, sid: str, path: str = "/cam0/stream=0") -> int:
    key = accounting.connected("127.0.0.1", port)
    accounting.setup(key, sid, path)
    accounting.play(key, sid, path.split("/stream=")[0])
    return key


def test_rule_waking_lasts_one_second_after_the_last_sample_that_saw_the_stop() -> None:
    fake = Fake()
    fake.states[7] = ("S", 1)
    fake.holders[5000] = [7]
    accounting = fake.accounting()
    playing(accounting, 5000, "a")
    assert accounting.readers["/cam0"] == 1
    fake.states[7] = ("T", 1)
    fake.now += 0.05
    accounting.sample()
    assert accounting.readers["/cam0"] == 0
    stopped = fake.now
    fake.states[7] = ("R", 1)
    for delay in (0.05, 0.5, WAKING_SECONDS - 0.01):
        fake.now = stopped + delay
        assert accounting.sample()["sessions"][0]["process"] == "waking"
        assert accounting.readers["/cam0"] == 0
    fake.now = stopped + WAKING_SECONDS
    assert accounting.sample()["sessions"][0]["process"] == "running"
    assert accounting.readers["/cam0"] == 1


def test_rule_unknown_counts_gone_and_reused_pids_do_not() -> None:
    fake = Fake()
    fake.states.update({7: ("S", 1), 8: ("S", 1)})
    fake.holders.update({5000: [7], 5002: [8]})
    accounting = fake.accounting()
    playing(accounting, 5000, "a")
    playing(accounting, 5001, "b")  # no process found: counted
    assert accounting.readers["/cam0"] == 2 and len(accounting.violations) == 1
    playing(accounting, 5002, "c", "/cam1/stream=0")
    fake.states[7] = None  # exited
    fake.states[8] = ("S", 2)  # another process at the pid
    status = accounting.sample()
    processes = {s["session"]: s["process"] for s in status["sessions"]}
    assert processes == {"a": "gone", "b": "unknown", "c": "gone"}
    assert accounting.readers == {"/cam0": 1, "/cam1": 0}
    assert accounting.violations[0]["ended"] is not None and accounting.max_readers["/cam0"] == 2


def test_rule_a_forked_client_reads_while_any_holder_runs() -> None:
    fake = Fake()
    fake.states.update({7: ("T", 1), 9: ("S", 1)})
    fake.holders[5000] = [7, 9]
    accounting = fake.accounting()
    playing(accounting, 5000, "a")
    assert accounting.readers["/cam0"] == 1
    fake.states[9] = ("t", 1)
    assert accounting.sample()["sessions"][0]["process"] == "stopped"


def test_rule_one_violation_per_run_with_every_session_in_it() -> None:
    fake = Fake()
    accounting = fake.accounting()
    key_a = playing(accounting, 5000, "a")
    playing(accounting, 5001, "b")
    fake.now += 0.05
    accounting.sample()
    playing(accounting, 5002, "c")
    accounting.pause(key_a, "a")  # a PAUSE stops the reading, the violation goes on (b, c)
    accounting.closed(key_a)
    [violation] = accounting.violations
    assert violation["readers"] == 3 and violation["ended"] is None and violation["samples"] >= 3
    assert [s["session"] for s in violation["sessions"]] == ["a", "b", "c"]
    accounting.removed("b")
    assert violation["ended"] is not None and accounting.readers["/cam0"] == 1
    assert accounting.sessions_seen == {"/cam0": 3, "/cam1": 0}
