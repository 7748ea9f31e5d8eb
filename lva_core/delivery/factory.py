"""The outbox of the configured stream store: the same database, so one backup holds both."""

from __future__ import annotations

from lva_core.delivery.outbox import Outbox
from lva_core.delivery.sqlite_outbox import SqliteOutbox
from lva_core.streams.store.base import StreamStore
from lva_core.streams.store.sqlite import SqliteStreamStore


def open_outbox(store: StreamStore) -> Outbox:
    if isinstance(store, SqliteStreamStore):
        return SqliteOutbox(store)
    # Imported here: a single-node core never loads the database client.
    from lva_core.delivery.postgres_outbox import PostgresOutbox
    from lva_core.streams.store.postgresql import PostgresStreamStore

    if isinstance(store, PostgresStreamStore):
        return PostgresOutbox(store)
    raise TypeError(f"no outbox for the stream store {type(store).__name__}")
