"""lva_core/runtime/procfs.py on real processes: this test's own, and children it starts and kills;
and the test kit's port helpers, which read /proc as well."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lva_core.runtime import procfs
from lva_testkit.ports import address_in_use, listening_ports, refused_port

# Maps a file of /dev/shm, says so, then waits to be killed.
MAPPER = """
import mmap, sys, time
with open(sys.argv[1], "r+b") as f:
    region = mmap.mmap(f.fileno(), mmap.PAGESIZE)
print("mapped", flush=True)
time.sleep(60)
"""


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def shm_file() -> Iterator[Path]:
    path = Path("/dev/shm") / f"lva_test_procfs_{uuid.uuid4().hex}"
    path.write_bytes(b"\0" * os.sysconf("SC_PAGE_SIZE"))
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture
def mapper(shm_file: Path) -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen([sys.executable, "-c", MAPPER, str(shm_file)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "mapped\n"
    yield child
    child.kill()
    child.wait()


def test_own_process() -> None:
    pid = os.getpid()
    assert procfs.exists(pid) and not procfs.gone(pid)
    assert procfs.state(pid) in {"R", "S"}
    identity = procfs.start_time(pid)
    assert identity is not None and procfs.running(pid, identity)
    assert not procfs.running(pid, identity + "0"), "another start time is another process"
    assert procfs.rss_kib(pid) > 1024  # a Python interpreter with numpy and pytest loaded
    before = procfs.cpu_seconds(pid)
    busy_until = time.process_time() + 0.2
    while time.process_time() < busy_until:
        pass
    assert procfs.cpu_seconds(pid) >= before + 0.1


def test_own_threads_and_fds(tmp_path: Path) -> None:
    pid = os.getpid()
    assert threading.get_native_id() in procfs.thread_ids(pid)
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    threads_before, fds_before = procfs.thread_count(pid), procfs.fd_count(pid)
    thread.start()
    try:
        assert thread.native_id in procfs.thread_ids(pid)
        assert procfs.thread_count(pid) == threads_before + 1
        with (tmp_path / "f").open("w"):
            assert procfs.fd_count(pid) == fds_before + 1
    finally:
        release.set()
        thread.join()
    wait_until(lambda: thread.native_id not in procfs.thread_ids(pid))


def test_a_child_maps_shared_memory_then_is_killed(mapper: subprocess.Popen[str], shm_file: Path) -> None:
    pid, me = mapper.pid, os.getpid()
    identity = procfs.start_time(pid)
    assert identity is not None
    assert procfs.children(me)[pid] == identity
    assert procfs.tree(me)[0] == me and pid in procfs.tree(me)
    assert procfs.tree_rss_kib(me) >= procfs.rss_kib(me) + procfs.rss_kib(pid) > procfs.rss_kib(me)
    assert procfs.mapped_under(str(shm_file), [pid]) == {shm_file}
    assert str(shm_file) not in procfs.mapped_paths([me])
    assert str(shm_file) in procfs.mapped_paths(), "every process is read when no pid is given"
    # Unlinked while mapped, the file shows as "<path> (deleted)": still under its own path.
    shm_file.unlink()
    assert procfs.mapped_under(str(shm_file), [pid]) == {shm_file}

    mapper.send_signal(signal.SIGKILL)
    # Not reaped yet: a zombie, which has exited and let go of its mappings but keeps its pid.
    wait_until(lambda: procfs.state(pid) == "Z")
    assert procfs.exists(pid) and procfs.gone(pid) and not procfs.running(pid, identity)
    assert procfs.mapped_paths([pid]) == set()
    mapper.wait()
    assert not procfs.exists(pid) and procfs.gone(pid)
    assert procfs.stat_fields(pid) is None and procfs.start_time(pid) is None
    gone = (procfs.rss_kib(pid), procfs.cpu_seconds(pid), procfs.thread_count(pid), procfs.fd_count(pid))
    assert gone == (0, 0.0, 0, 0)
    assert procfs.thread_ids(pid) == set() and pid not in procfs.children(me)


def test_stat_is_split_after_the_last_parenthesis(tmp_path: Path) -> None:
    # The command name is the executable's, in parentheses: one with spaces and parentheses of
    # its own must not shift the fields.
    sleep = shutil.which("sleep")
    assert sleep is not None
    odd = tmp_path / "sl ep) (x"
    shutil.copy(sleep, odd)
    child = subprocess.Popen([str(odd), "60"])
    try:
        fields = procfs.stat_fields(child.pid)
        assert fields is not None and fields[0] in {"R", "S"} and fields[1] == str(os.getpid())
        assert child.pid in procfs.children(os.getpid())
    finally:
        child.kill()
        child.wait()


# ---- the test kit's port helpers (lva_testkit/ports.py), which read /proc too -------------------

LISTENER = """
import socket, sys
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen()
print(sock.getsockname()[1], flush=True)
sys.stdin.read()
"""


def test_listening_ports_tell_a_process_own_port_from_another_one() -> None:
    with socket.socket() as bound, socket.socket() as listening:
        bound.bind(("127.0.0.1", 0))  # bound, not listening: not a port anyone can connect to
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        child = subprocess.Popen(
            [sys.executable, "-c", LISTENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            theirs = int(child.stdout.readline())
            ours = listening_ports(os.getpid())
            assert listening.getsockname()[1] in ours
            assert bound.getsockname()[1] not in ours and theirs not in ours
            assert theirs in listening_ports(child.pid)  # open to both: owned by one
            assert listening_ports([os.getpid(), child.pid]) >= {theirs, listening.getsockname()[1]}
        finally:
            child.kill()
            child.wait()
    assert listening_ports(child.pid) == set()  # gone


def test_a_refused_port_refuses_and_cannot_be_taken() -> None:
    with refused_port() as port:
        with socket.socket() as client:
            assert client.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
        with socket.socket() as intruder:
            intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as taken:
                intruder.bind(("127.0.0.1", port))
            assert taken.value.errno == errno.EADDRINUSE


@pytest.mark.parametrize(
    "line",
    [
        "OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 5240): "
        "address already in use",
        "E1201 main.cc:245] \"failed to start GRPC service: Unavailable - Socket '127.0.0.1:8001' "
        'already in use "',
        "failed to start Metrics service: Unavailable - Socket '127.0.0.1:8002' already in use",
    ],
)
def test_address_in_use_is_recognised_in_the_children_own_words(line: str) -> None:
    assert address_in_use(line)
    assert not address_in_use("tritonserver exited with code 1: model broken failed to load")
