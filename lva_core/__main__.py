"""``lva-core``: the gRPC core service."""

from __future__ import annotations

import argparse
import asyncio

from lva_common.config import load_config
from lva_common.logs import setup_logging
from lva_core.api.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lva-core", description=__doc__)
    parser.add_argument("--config", help="YAML configuration file (default: $LVA_CONFIG)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    setup_logging(config["core"]["log_level"], config["core"].get("log_format", "text"))
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
