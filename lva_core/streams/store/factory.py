"""The stream store the configuration names: ``streams.store`` (a URL), else ``streams.store_path``."""

from __future__ import annotations

from typing import Any

from lva_core.streams.store.base import StoreError, StreamStore
from lva_core.streams.store.sqlite import MEMORY, SqliteStreamStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite://"


def store_path(config: dict[str, Any]) -> str:
    """``streams.store_path``; ``""`` and ``":memory:"`` keep the streams in memory only."""
    value = (config.get("streams") or {}).get("store_path", "")
    if value is None:
        return MEMORY
    if not isinstance(value, str):
        # An unquoted :memory: in YAML is a mapping, not a string.
        raise StoreError(f'streams.store_path must be a string (quote ":memory:"), not {value!r}')
    return value or MEMORY


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite://`` URL, as SQLAlchemy reads them: ``sqlite:///var/x`` is the
    relative ``var/x``, ``sqlite:////var/x`` the absolute ``/var/x``, ``sqlite://`` memory."""
    rest = url[len(SQLITE_SCHEME) :]
    if rest in ("", "/", "/:memory:"):
        return MEMORY
    if not rest.startswith("/"):
        raise StoreError(f"streams.store {url!r}: a sqlite URL is sqlite:///<path> (three slashes)")
    return rest[1:]


def store_url(config: dict[str, Any]) -> str:
    """``streams.store``: where the streams are kept, as a URL; ``""`` when store_path decides."""
    value = (config.get("streams") or {}).get("store", "")
    if not isinstance(value, str):
        raise StoreError(f"streams.store must be a URL string, not {type(value).__name__}")
    return value.strip()


def open_store(config: dict[str, Any]) -> StreamStore:
    """The configured store, opened; raises StoreError when it cannot be used."""
    url = store_url(config)
    if not url:
        return SqliteStreamStore(store_path(config))
    lowered = url.lower()
    if lowered.startswith(POSTGRES_SCHEMES):
        # Imported here: a single-node core never loads the database client.
        from lva_core.streams.store.postgresql import PostgresStreamStore

        return PostgresStreamStore(url)
    if lowered.startswith(SQLITE_SCHEME):
        return SqliteStreamStore(sqlite_path(url))
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise StoreError(
        f"streams.store: unsupported scheme {scheme!r}; use postgresql://... or sqlite:///<path>"
    )
