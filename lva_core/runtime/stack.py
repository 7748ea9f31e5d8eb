"""``make run``: the whole stack on local defaults (core with its local Triton, and the facade).

Each service runs as its own process so that one crashing never takes the other's state with
it. Ctrl-C (SIGINT) or SIGTERM stops the facade first, then the core, which stops Triton.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from lva_common.config import load_config
from lva_common.signals import stop_event
from lva_core.runtime.processes import stop_process, wait_port


async def run_stack(config_path: str | None) -> int:
    config = load_config(config_path)
    extra = ["--config", config_path] if config_path else []
    stop = stop_event()

    core = await asyncio.create_subprocess_exec(sys.executable, "-m", "lva_core", *extra)
    if not await wait_port(config["core"]["host"], int(config["core"]["port"]), 30):
        await stop_process(core)
        print("the core did not start; see its log above", file=sys.stderr)
        return 1
    facade = await asyncio.create_subprocess_exec(sys.executable, "-m", "lva_facade", *extra)
    facade_cfg = config["facade"]
    if await wait_port(facade_cfg["host"], int(facade_cfg["port"]), 30):
        print(
            f"\nLuna Video Agent is up: REST http://{facade_cfg['host']}:{facade_cfg['port']}  "
            f"gRPC {config['core']['host']}:{config['core']['port']}  (Ctrl-C stops everything)\n",
            flush=True,
        )
    waiters = [asyncio.create_task(p.wait()) for p in (core, facade)]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([*waiters, stopper], return_when=asyncio.FIRST_COMPLETED)
    crashed = not stop.is_set()
    await stop_process(facade)
    await stop_process(core)
    stopper.cancel()
    if crashed:
        print(
            f"a service exited (core {core.returncode}, facade {facade.returncode}); stopped the stack",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lva-stack", description=__doc__)
    parser.add_argument("--config", help="YAML configuration file (default: $LVA_CONFIG)")
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(run_stack(args.config)))


if __name__ == "__main__":
    main()
