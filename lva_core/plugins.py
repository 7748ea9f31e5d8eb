"""Plugins are found through Python entry points, so that a pip-installed package can add one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

# Entry-point group -> the kind reported by /1/plugins: the groups the core loads, analytics
# (analytics/registry.py) and the sinks of callbacks (delivery/callbacks.py); a group nothing
# loads would only list dead entries.
GROUPS = {"lva.analytics": "analytic", "lva.sinks": "sink"}


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str
    version: str
    distribution: str
    entry_point: str
    enabled: bool
    distribution_version: str


def discover_plugins(config: dict[str, Any], loaded: Mapping[str, str]) -> list[PluginInfo]:
    """Every plugin installed; ``loaded`` maps the names of those the core loaded to their own
    version, the one the analytics catalogue shows (a package's version is another thing)."""
    disabled = set(config.get("plugins", {}).get("disabled") or [])
    found: list[PluginInfo] = []
    for group, kind in GROUPS.items():
        for ep in entry_points(group=group):
            dist = ep.dist
            found.append(
                PluginInfo(
                    name=ep.name,
                    kind=kind,
                    version=loaded.get(ep.name, ""),
                    distribution=dist.name if dist is not None else "",
                    entry_point=ep.value,
                    enabled=ep.name not in disabled,
                    distribution_version=dist.version if dist is not None else "",
                )
            )
    return sorted(found, key=lambda p: (p.kind, p.name))
