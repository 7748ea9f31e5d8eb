"""A PostgreSQL cluster run from Debian's binaries, in a directory of its own, on a loopback port.

``make fleet`` keeps its agents' shared stream store in one (``var/postgres/``, durable: it
survives restarts, and the next ``make fleet`` finds its streams there); the test kit's
throw-away clusters (lva_testkit/postgres.py) are the same with durability off.

The directory holds ``data/`` (the cluster, made by ``initdb`` the first time: user ``lva``,
trust authentication, UTF8), ``postgres.log`` and the server's unix socket. The server listens
on 127.0.0.1 only: with trust authentication any local user may connect as ``lva``, as with a
developer's own database, and nobody else can. PostgreSQL refuses to run as root, so under root
(CI, containers) its programs run as the ``postgres`` user that Debian's package creates, in a
directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lva_core.runtime.processes import listening

USER = "lva"
DATABASE = "lva"
INSTALL_HINT = "Debian or Ubuntu: apt-get install postgresql"
# A throw-away cluster's settings: nothing waits for the disk, and a crash loses the cluster.
NOT_DURABLE = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
# Under root, PostgreSQL's programs run as this user (Debian's package creates it).
SYSTEM_USER = "postgres"


class PostgresError(RuntimeError):
    """PostgreSQL is missing, or a cluster could not be created, started or stopped."""


class PortInUse(PostgresError):
    """The server could not listen on its port: another process holds it."""


def _version_key(initdb: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin/initdb; a version is "16", or "9.6" before PostgreSQL 10.
    return tuple(int(n) for n in re.findall(r"\d+", Path(initdb).parts[-3]))


def bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian keeps them out of PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresError(
        "PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb and no initdb on PATH "
        f"({INSTALL_HINT})"
    )


def runner() -> list[str]:
    """The command prefix that runs PostgreSQL's programs as a user it accepts."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL refuses to run as root, and there is no {SYSTEM_USER!r} user to run it as "
            f"({INSTALL_HINT} creates it)"
        ) from None
    return ["runuser", "-u", SYSTEM_USER, "--"]


@dataclass
class LocalPostgres:
    """One cluster in ``root``: :meth:`start` (which creates it the first time), :meth:`stop`."""

    root: Path
    port: int
    # False: fsync and the rest off (NOT_DURABLE), for a cluster that never outlives its user.
    durable: bool = True
    max_connections: int = 200

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def run(self, program: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """One of PostgreSQL's programs, as the user it runs as; its output captured."""
        command = [*runner(), str(bin_dir() / program), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def _prepare(self) -> None:
        """``root`` exists, and belongs to the user the server runs as."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not runner():
            return
        owner = pwd.getpwnam(SYSTEM_USER)
        if self.root.stat().st_uid != owner.pw_uid:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        reach = subprocess.run(
            [*runner(), "test", "-w", str(self.root), "-a", "-x", str(self.root)], check=False
        )
        if reach.returncode != 0:
            raise PostgresError(
                f"the {SYSTEM_USER} user cannot use {self.root}: every directory above it must let it "
                "through (a private one, such as pytest's temporary directory under root, does not)"
            )

    def _initdb(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        args = ["-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8"]
        done = self.run("initdb", *args, *([] if self.durable else ["--no-sync"]), timeout=120)
        if done.returncode != 0:
            raise PostgresError(f"initdb {self.data} failed:\n{done.stdout}\n{done.stderr}")

    def running(self) -> bool:
        """Whether a server runs on this cluster's data (its own, or one another process started)."""
        return self.data.exists() and self.run("pg_ctl", "-D", str(self.data), "status").returncode == 0

    def pid(self) -> int | None:
        """The server's process id (the first line of ``postmaster.pid``), None when it is not running."""
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() else None

    def start(self, timeout: float = 60) -> None:
        """Create the cluster if it is new, start the server on :attr:`port`, create the database
        ``lva``. :class:`PortInUse` when another process holds the port."""
        self._prepare()
        self._initdb()
        if self.running():
            raise PostgresError(
                f"a PostgreSQL server already runs on {self.data} (pid {self.pid()}); stop it with "
                f"{shlex.join([*runner(), str(bin_dir() / 'pg_ctl'), '-D', str(self.data), 'stop'])}"
            )
        settings = ["listen_addresses=127.0.0.1", f"max_connections={self.max_connections}"]
        settings += [] if self.durable else list(NOT_DURABLE)
        options = f"-p {self.port} -k {shlex.quote(str(self.root))} " + " ".join(f"-c {s}" for s in settings)
        logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        done = self.run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w",
            "-t", str(int(timeout)), "start", timeout=timeout + 10,
        )  # fmt: skip
        if done.returncode != 0 or not listening(self.port):
            this_start = self.log_text()[logged:]
            if "already in use" in this_start:
                raise PortInUse(f"PostgreSQL could not listen on port {self.port}: another process holds it")
            raise PostgresError(
                f"PostgreSQL did not start (log: {self.log_path}):\n"
                f"{done.stdout}{done.stderr}\n{this_start[-3000:]}"
            )
        try:
            self.create_database(DATABASE)
        except PostgresError:
            self.stop()
            raise

    def create_database(self, name: str) -> str:
        """The URL of database ``name``, created empty if it does not exist."""
        done = self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name)
        if done.returncode != 0 and "already exists" not in done.stderr:
            raise PostgresError(f"createdb {name} failed: {done.stderr}")
        return self.url_for(name)

    def restart(self, mode: str = "fast") -> None:
        # -l: without it the new server writes to our pipe, which then never reaches its end.
        done = self.run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-m", mode, "-w", "restart", timeout=70
        )
        if done.returncode != 0:
            raise PostgresError(f"pg_ctl restart failed:\n{done.stdout}\n{self.log_text()[-3000:]}")

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """Stop the server: ``fast`` (clients cut, a clean checkpoint) or ``immediate``. A server
        that has not stopped after ``timeout`` seconds is stopped ``immediate`` (no checkpoint:
        it replays its write-ahead log at the next start)."""
        if not self.running():
            return
        for attempt in (mode, "immediate"):
            done = self.run(
                "pg_ctl", "-D", str(self.data), "-m", attempt, "-w", "-t", str(int(timeout)), "stop",
                timeout=timeout + 10,
            )  # fmt: skip
            if done.returncode == 0 or not self.running():
                return
        raise PostgresError(f"pg_ctl stop failed:\n{done.stdout}\n{done.stderr}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
