"""``lva-facade``: the REST/WebSocket facade in front of the core."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from lva_common.config import load_config
from lva_common.logs import setup_logging
from lva_facade.app import build_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lva-facade", description=__doc__)
    parser.add_argument("--config", help="YAML configuration file (default: $LVA_CONFIG)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    setup_logging(config["core"]["log_level"], config["core"].get("log_format", "text"))
    facade = config["facade"]
    logging.getLogger("lva_facade").info(
        "facade on %s:%s -> core %s", facade["host"], facade["port"], facade["core_address"]
    )
    web.run_app(
        build_app(config),
        host=facade["host"],
        port=int(facade["port"]),
        print=None,
        access_log=None,
        handle_signals=True,
        # Open WebSockets would otherwise hold the shutdown for a minute.
        shutdown_timeout=3.0,
    )


if __name__ == "__main__":
    main()
