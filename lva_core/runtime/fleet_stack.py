"""``make fleet``: several agents on one machine, sharing one PostgreSQL, one Triton and one facade.

Started in this order, each once the one before it answers:

1. a local PostgreSQL (lva_core/runtime/local_postgres.py): Debian's binaries, the cluster in
   ``--data`` (``var/postgres/``), durable, kept over restarts (the next fleet finds its
   streams), on ``--pg-port`` (5433, beside a system PostgreSQL on 5432);
2. one Triton, through ``python -m lva_core.runtime.triton_server`` with the configuration's
   ports, environment and model repository, once it prints ``READY``. Every core uses it as an
   external Triton on loopback, with shared-memory regions of its own (``lva_<pid>_<n>``);
3. ``--agents`` cores on that PostgreSQL: core *i* serves gRPC on ``core.port + 100*i`` and its
   metrics on ``core.metrics_port + 100*i`` (core 0 is where ``make run``'s core is), as agent
   ``<hostname>-agent-<i>``;
4. one facade, balancing round robin over every core (``facade.core_address`` as a list).

Ctrl-C (SIGINT) or SIGTERM stops them in the reverse order: the facade, the cores (each drains
and hands its streams back), Triton, then PostgreSQL, each given a timeout before it is killed.
Each child runs in a process group of its own, so that the terminal's Ctrl-C reaches this
launcher alone and the order holds, and it is sent SIGTERM should the launcher die
(``PR_SET_DEATHSIG``; the PostgreSQL server excepted: ``pg_ctl`` detaches it). A child that exits
by itself stops the rest, and the launcher exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lva_common.aio import wait_within
from lva_common.config import load_config
from lva_common.signals import stop_event
from lva_core.runtime.local_postgres import LocalPostgres, PostgresError
from lva_core.runtime.processes import listening, stop_process, wait_port
from lva_core.runtime.triton_server import _DEATH_SIGNAL_LAUNCHER

T = TypeVar("T")

DEFAULT_PG_PORT = 5433
DEFAULT_DATA = Path("var/postgres")
PORT_STEP = 100
# Seconds a core or the facade has to open its port.
SERVICE_START_TIMEOUT = 60.0
# Seconds Triton has beyond its own triton.startup_timeout (the launcher's start-up and probe).
TRITON_START_MARGIN = 30.0
_WILDCARDS = ("", "0.0.0.0", "::")


class Interrupted(Exception):
    """The start-up or the run ended early: Ctrl-C (no reason), or a child that exited (the reason)."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or "stopped")
        self.reason = reason


def _reach(host: str) -> str:
    """The address at which a server bound to ``host`` is reached from this machine."""
    return "127.0.0.1" if host in _WILDCARDS else host


@dataclass(frozen=True)
class Plan:
    """Where everything listens."""

    agents: int
    data: Path
    pg_port: int
    triton_grpc: int
    triton_http: int
    triton_metrics: int
    core_host: str
    core_ports: tuple[int, ...]
    core_metrics_ports: tuple[int, ...]
    facade_host: str
    facade_port: int

    @property
    def triton_url(self) -> str:
        return f"127.0.0.1:{self.triton_grpc}"  # the launcher's Triton binds loopback only

    @property
    def core_addresses(self) -> list[str]:
        return [f"{_reach(self.core_host)}:{port}" for port in self.core_ports]

    @property
    def rest_url(self) -> str:
        return f"http://{_reach(self.facade_host)}:{self.facade_port}"

    def ports(self) -> dict[str, int]:
        """Every port this fleet will listen on, by who listens (0: a free one, never checked)."""
        named = {
            "PostgreSQL": self.pg_port,
            "Triton gRPC": self.triton_grpc,
            "Triton HTTP": self.triton_http,
            "Triton metrics": self.triton_metrics,
            "the facade": self.facade_port,
        }
        for i, (port, metrics) in enumerate(zip(self.core_ports, self.core_metrics_ports, strict=True)):
            named[f"core {i}"] = port
            named[f"core {i} metrics"] = metrics
        return named


def make_plan(args: argparse.Namespace, config: dict[str, Any]) -> Plan:
    """The ports of ``args``, the configuration's where ``args`` name none."""
    triton, core, facade = config["triton"], config["core"], config["facade"]
    step = int(args.port_step)
    core_port = int(args.core_port or core["port"])
    metrics_port = int(core["metrics_port"] if args.core_metrics_port is None else args.core_metrics_port)
    return Plan(
        agents=int(args.agents),
        data=Path(args.data),
        pg_port=int(args.pg_port),
        triton_grpc=int(args.triton_grpc_port or str(triton["url"]).rsplit(":", 1)[1]),
        triton_http=int(args.triton_http_port or triton["http_port"]),
        triton_metrics=int(args.triton_metrics_port or triton["metrics_port"]),
        core_host=str(core["host"]),
        core_ports=tuple(core_port + step * i for i in range(args.agents)),
        # 0: every core takes a free port and logs it.
        core_metrics_ports=tuple(metrics_port + step * i if metrics_port else 0 for i in range(args.agents)),
        facade_host=str(facade["host"]),
        facade_port=int(args.facade_port or facade["port"]),
    )


def core_env(plan: Plan, index: int, store: str) -> dict[str, str]:
    """The environment overrides of core ``index``: over the configuration file, under nothing."""
    return {
        "LVA_STREAMS__STORE": store,
        "LVA_TRITON__MODE": "external",
        "LVA_TRITON__URL": plan.triton_url,
        "LVA_CORE__PORT": str(plan.core_ports[index]),
        "LVA_CORE__METRICS_PORT": str(plan.core_metrics_ports[index]),
        "LVA_FLEET__AGENT_ID": f"{socket.gethostname()}-agent-{index}",
    }


async def _gone(pid: int) -> None:
    """Returns once process ``pid`` (not a child of ours: the PostgreSQL server) has exited.

    Its pidfd becomes readable then (Linux 5.3); without one, this never returns.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:
        await asyncio.Event().wait()
        return
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    loop.add_reader(fd, exited.set)
    try:
        await exited.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _copy_lines(stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        sys.stdout.write(line.decode(errors="replace"))
        sys.stdout.flush()


class Fleet:
    """The started children, in start order, and what ends the run: Ctrl-C or a child's exit."""

    def __init__(self, plan: Plan, config_path: str | None, stop: asyncio.Event) -> None:
        self.plan = plan
        self.extra = ["--config", config_path] if config_path else []
        self.stopper = asyncio.ensure_future(stop.wait())
        self.postgres: LocalPostgres | None = None
        self.triton: asyncio.subprocess.Process | None = None
        self.cores: list[asyncio.subprocess.Process] = []
        self.facade: asyncio.subprocess.Process | None = None
        # What ends a run besides Ctrl-C: each child's exit, and the PostgreSQL server's.
        self.exits: dict[asyncio.Future[Any], str] = {}
        self._copier: asyncio.Task[None] | None = None

    def _reason(self) -> str | None:
        """Why the run ends: None for Ctrl-C, else who exited."""
        if self.stopper.done():
            return None
        for future, name in self.exits.items():
            if future.done():
                code = future.result() if not future.cancelled() else None
                return f"{name} exited" + (f" with {code}" if code is not None else "")
        return "unknown"

    async def until(self, awaitable: Awaitable[T]) -> T:
        """``awaitable``'s result, unless Ctrl-C or a child's exit comes first (:class:`Interrupted`)."""
        task = asyncio.ensure_future(awaitable)
        await asyncio.wait({task, self.stopper, *self.exits}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise Interrupted(self._reason())

    async def _spawn(
        self, name: str, module: str, args: list[str], env: dict[str, str], **kwargs: Any
    ) -> asyncio.subprocess.Process:
        # The launcher sets PR_SET_DEATHSIG, then becomes ``python -m module`` (the same pid).
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _DEATH_SIGNAL_LAUNCHER, str(os.getpid()),
            sys.executable, "-m", module, *args,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            process_group=0,  # Ctrl-C reaches the launcher only: it stops the children in order
            **kwargs,
        )  # fmt: skip
        self.exits[asyncio.ensure_future(proc.wait())] = name
        print(f"fleet: {name} started, pid {proc.pid}", flush=True)
        return proc

    async def start_postgres(self) -> None:
        postgres = LocalPostgres(self.plan.data, self.plan.pg_port)
        await asyncio.to_thread(postgres.start)
        self.postgres = postgres  # only now: a server that already ran here is not ours to stop
        pid = postgres.pid()
        print(f"fleet: PostgreSQL {postgres.url} started, pid {pid}, data {postgres.data}", flush=True)
        if pid is not None:
            self.exits[asyncio.ensure_future(_gone(pid))] = "PostgreSQL"

    async def start_triton(self, triton: dict[str, Any]) -> None:
        plan = self.plan
        args = [
            "--env", str(triton["env_dir"]), "--repo", str(triton["model_repository"]),
            "--grpc-port", str(plan.triton_grpc), "--http-port", str(plan.triton_http),
            "--metrics-port", str(plan.triton_metrics),
            "--model-control-mode", str(triton["model_control_mode"]),
            "--startup-timeout", str(float(triton["startup_timeout"])),
        ]  # fmt: skip
        if triton.get("log_path"):
            args += ["--log", str(triton["log_path"])]
        self.triton = proc = await self._spawn(
            "Triton", "lva_core.runtime.triton_server", args, {}, stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        timeout = float(triton["startup_timeout"]) + TRITON_START_MARGIN
        try:
            ready = await self.until(wait_within(self._ready_line(proc.stdout), timeout))
        except TimeoutError:
            raise Interrupted(f"Triton was not ready within {timeout:g} s") from None
        if ready is None:
            await self.until(proc.wait())  # its exit, which until() reports
        self._copier = asyncio.create_task(_copy_lines(proc.stdout))

    @staticmethod
    async def _ready_line(stream: asyncio.StreamReader) -> str | None:
        """The URL of the launcher's ``READY <url>`` line; None when its output ended first."""
        while line := await stream.readline():
            text = line.decode(errors="replace")
            if text.startswith("READY "):
                return text.split(" ", 1)[1].strip()
            sys.stdout.write(text)
        return None

    async def start_cores(self, store: str) -> None:
        plan = self.plan
        for i in range(plan.agents):
            self.cores.append(
                await self._spawn(f"core {i}", "lva_core", self.extra, core_env(plan, i, store))
            )
        host = _reach(plan.core_host)
        opened = await self.until(
            asyncio.gather(*(wait_port(host, port, SERVICE_START_TIMEOUT) for port in plan.core_ports))
        )
        late = [f"core {i} (port {plan.core_ports[i]})" for i, ok in enumerate(opened) if not ok]
        if late:
            raise Interrupted(f"{', '.join(late)} did not listen within {SERVICE_START_TIMEOUT:g} s")

    async def start_facade(self) -> None:
        plan = self.plan
        env = {
            "LVA_FACADE__PORT": str(plan.facade_port),
            "LVA_FACADE__CORE_ADDRESS": ",".join(plan.core_addresses),
        }
        self.facade = await self._spawn("facade", "lva_facade", self.extra, env)
        if not await self.until(wait_port(_reach(plan.facade_host), plan.facade_port, SERVICE_START_TIMEOUT)):
            raise Interrupted(
                f"the facade did not listen on {plan.facade_port} within {SERVICE_START_TIMEOUT:g} s"
            )

    async def run(self, config: dict[str, Any]) -> None:
        """Start everything, then return once Ctrl-C comes (a child's exit: :class:`Interrupted`)."""
        await self.start_postgres()
        if self.stopper.done():
            return
        assert self.postgres is not None
        await self.start_triton(config["triton"])
        await self.start_cores(self.postgres.url)
        await self.start_facade()
        plan = self.plan
        cores = "  ".join(f"core {i} gRPC {a}" for i, a in enumerate(plan.core_addresses))
        print(
            f"\nLuna Video Agent fleet is up: REST {plan.rest_url}  {cores}  Triton {plan.triton_url}  "
            f"PostgreSQL {self.postgres.url}  (Ctrl-C stops everything)\n",
            flush=True,
        )
        await asyncio.wait({self.stopper, *self.exits}, return_when=asyncio.FIRST_COMPLETED)
        if not self.stopper.done():
            raise Interrupted(self._reason())

    async def close(self) -> None:
        """Stop whatever was started: the facade, the cores (together: each drains), Triton,
        PostgreSQL."""
        if self.facade is not None:
            await stop_process(self.facade)
        await asyncio.gather(*(stop_process(core) for core in self.cores))
        if self.triton is not None:
            await stop_process(self.triton)
        if self._copier is not None:
            self._copier.cancel()
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)
        for future in [self.stopper, *self.exits]:
            future.cancel()


async def run_fleet(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    plan = make_plan(args, config)
    ports = [port for port in plan.ports().values() if port]
    if len(set(ports)) < len(ports):
        print(f"the fleet's ports overlap: {plan.ports()}; choose another --port-step", file=sys.stderr)
        return 1
    taken = [f"{who} ({port})" for who, port in plan.ports().items() if port and listening(port)]
    if taken:
        print(
            f"ports in use: {', '.join(taken)}; is another make run or make fleet running? "
            "(the options --pg-port, --core-port, --facade-port, --triton-*-port move them)",
            file=sys.stderr,
        )
        return 1
    fleet = Fleet(plan, args.config, stop_event())
    try:
        await fleet.run(config)
    except Interrupted as exc:
        if exc.reason is not None:
            print(f"fleet: {exc.reason}; stopping the fleet", file=sys.stderr, flush=True)
            return 1
    except PostgresError as exc:
        print(f"fleet: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        await fleet.close()
        print("fleet: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lva-fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=3, help="the number of cores (default 3)")
    parser.add_argument("--config", help="YAML configuration file (default: $LVA_CONFIG)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help=f"PostgreSQL's directory ({DEFAULT_DATA})")
    parser.add_argument("--pg-port", type=int, default=DEFAULT_PG_PORT, help=f"({DEFAULT_PG_PORT})")
    parser.add_argument("--core-port", type=int, help="core 0's gRPC port (core.port); core i adds i steps")
    parser.add_argument("--core-metrics-port", type=int, help="core 0's metrics port (core.metrics_port)")
    parser.add_argument("--port-step", type=int, default=PORT_STEP, help=f"between two cores ({PORT_STEP})")
    parser.add_argument("--facade-port", type=int, help="the REST port (facade.port)")
    parser.add_argument("--triton-grpc-port", type=int, help="(the port of triton.url)")
    parser.add_argument("--triton-http-port", type=int, help="(triton.http_port)")
    parser.add_argument("--triton-metrics-port", type=int, help="(triton.metrics_port)")
    args = parser.parse_args(argv)
    if args.agents < 1:
        parser.error("--agents must be at least 1")
    sys.exit(asyncio.run(run_fleet(args)))


if __name__ == "__main__":
    main()
