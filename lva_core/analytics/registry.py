"""The analytics catalogue: every ``lva.analytics`` entry point, instantiated once."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

from lva_core.analytics.base import Analytic

log = logging.getLogger("lva_core.analytics")
GROUP = "lva.analytics"


def discover_analytics(config: dict[str, Any]) -> dict[str, Analytic]:
    disabled = set(config.get("plugins", {}).get("disabled") or [])
    catalogue: dict[str, Analytic] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in disabled:
            continue
        try:
            analytic = ep.load()()
        except Exception:  # one broken plugin must not take the agent down
            log.exception("analytic plugin %s failed to load", ep.name)
            continue
        catalogue[analytic.name] = analytic
    return catalogue
