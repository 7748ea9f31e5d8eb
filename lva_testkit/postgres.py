"""A throw-away PostgreSQL cluster: Debian's binaries, data in a temporary directory, a loopback port.

The product's :class:`~lva_core.runtime.local_postgres.LocalPostgres` (``make fleet`` runs its
store on one) with durability off (``fsync=off``: a test's database never outlives the test), on
a free port, and removed with its data when stopped. Under root it runs as the ``postgres`` user,
in a directory that user owns (see lva_core/runtime/local_postgres.py).
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lva_core.runtime.local_postgres import DATABASE, SYSTEM_USER, USER, LocalPostgres, PortInUse, bin_dir
from lva_testkit.ports import free_port, port_open

__all__ = ["DATABASE", "USER", "PostgresCluster", "bin_dir", "new_cluster"]


@dataclass
class PostgresCluster(LocalPostgres):
    """One cluster; start() it, use :attr:`url`, stop() it (which removes its data)."""

    port: int = 0
    durable: bool = False

    def start(self, timeout: float = 60) -> None:
        # A port taken between the choice and the bind fails the start: try again on another.
        for _ in range(5):
            self.port = self.port or free_port()
            try:
                super().start(timeout)
                return
            except PortInUse:
                self.port = 0
        raise RuntimeError(f"PostgreSQL found no free port:\n{self.log_text()[-3000:]}")

    def database(self, name: str) -> str:
        """The URL of database ``name`` in this cluster, created empty if it does not exist."""
        return self.create_database(name)

    def stop(self, mode: str = "immediate", timeout: float = 30) -> None:
        if self.data.exists():
            super().stop(mode, timeout)
        deadline = time.monotonic() + 10
        while self.port and port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)


def new_cluster() -> PostgresCluster:
    """A cluster in a new temporary directory, not started.

    Not under pytest's own temporary directory: that one is private to its user, and under root
    the cluster's user must be able to enter it.
    """
    root = Path(tempfile.mkdtemp(prefix="lva-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SYSTEM_USER)
        os.chown(root, owner.pw_uid, owner.pw_gid)
    return PostgresCluster(root)
