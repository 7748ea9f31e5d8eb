"""A throw-away PostgreSQL cluster: Debian's binaries, data in a temporary directory, a loopback port.

``initdb`` then ``pg_ctl start`` with durability off (``fsync=off``: a test's database never
outlives the test), listening on 127.0.0.1 only, with trust authentication for its one user.
PostgreSQL refuses to run as root, so under root (CI, containers) it runs as the ``postgres``
user the Debian package creates, in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lva_testkit.ports import free_port, port_open

USER = "lva"
DATABASE = "lva"


def bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian keeps them out of PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise RuntimeError(
        "PostgreSQL is not installed (Debian: apt-get install postgresql); .ci/run installs it"
    )


def _runner() -> list[str]:
    """The command prefix that runs PostgreSQL's programs as a user it accepts."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PostgresCluster:
    """One cluster; start() it, use :attr:`url`, stop() it (which removes its data)."""

    root: Path
    port: int = 0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / "postgres.log"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def url_for(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [*_runner(), str(bin_dir() / args[0]), *args[1:]]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self, timeout: float = 60) -> None:
        if not self.data.exists():
            done = self._run(
                "initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"
            )
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        # A port taken between the choice and the bind fails the start: try again on another.
        for _ in range(5):
            self.port = self.port or free_port()
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            done = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w",
                "-t", str(int(timeout)), "start", timeout=timeout + 10,
            )  # fmt: skip
            if done.returncode == 0 and port_open(self.port):
                break
            if "already in use" not in self.log_text():
                raise RuntimeError(f"PostgreSQL did not start:\n{done.stdout}\n{self.log_text()[-3000:]}")
            self.port = 0
        else:
            raise RuntimeError(f"PostgreSQL found no free port:\n{self.log_text()[-3000:]}")
        created = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE)
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise RuntimeError(f"createdb failed: {created.stderr}")

    def database(self, name: str) -> str:
        """The URL of database ``name`` in this cluster, created empty if it does not exist."""
        done = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name)
        if done.returncode != 0 and "already exists" not in done.stderr:
            raise RuntimeError(f"createdb {name} failed: {done.stderr}")
        return self.url_for(name)

    def restart(self, mode: str = "fast") -> None:
        # -l: without it the new server writes to our pipe, which then never reaches its end.
        done = self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-m", mode, "-w", "restart", timeout=70
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed:\n{done.stdout}\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        deadline = time.monotonic() + 10
        while self.port and port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def new_cluster() -> PostgresCluster:
    """A cluster in a new temporary directory, not started.

    Not under pytest's own temporary directory: that one is private to its user, and under root
    the cluster's user must be able to enter it.
    """
    root = Path(tempfile.mkdtemp(prefix="lva-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
    return PostgresCluster(root)
