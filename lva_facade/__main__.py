"""``lva-facade``: the REST/WebSocket facade in front of the core."""

from __future__ import annotations

import argparse
import asyncio
import logging

from lva_common.config import load_config
from lva_common.logs import setup_logging
from lva_facade.app import build_app
from lva_facade.http_protocol import serve


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
    try:
        app = build_app(config)
    except ValueError as exc:  # facade.core_address or facade.core_tls: one line, exit 1
        logging.getLogger("lva_facade").error("%s", exc)
        raise SystemExit(1) from None
    # Not web.run_app: its runner's connections would answer the HTTP parser's refusals in plain text.
    asyncio.run(serve(app, facade["host"], int(facade["port"])))


if __name__ == "__main__":
    main()
