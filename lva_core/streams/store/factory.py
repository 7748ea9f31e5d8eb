"""The stream store the configuration names (``streams.store_path``)."""

from __future__ import annotations

from typing import Any

from lva_core.streams.store.base import StoreError, StreamStore
from lva_core.streams.store.sqlite import MEMORY, SqliteStreamStore


def store_path(config: dict[str, Any]) -> str:
    """``streams.store_path``; ``""`` and ``":memory:"`` keep the streams in memory only."""
    value = (config.get("streams") or {}).get("store_path", "")
    if value is None:
        return MEMORY
    if not isinstance(value, str):
        # An unquoted :memory: in YAML is a mapping, not a string.
        raise StoreError(f'streams.store_path must be a string (quote ":memory:"), not {value!r}')
    return value or MEMORY


def open_store(config: dict[str, Any]) -> StreamStore:
    """The configured store, opened; raises StoreError when it cannot be used."""
    return SqliteStreamStore(store_path(config))
