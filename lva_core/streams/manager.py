"""The stream registry and lifecycle: create, get, list, pause/resume, delete; one worker each."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from lva_common.errors import BAD_QUERY, CONFLICT, INTERNAL, OBJECT_NOT_FOUND, LunaError, invalid
from lva_common.ids import canonical_uuid, query_uuid
from lva_core.analytics.base import Analytic
from lva_core.delivery.callbacks import PARAMETER, callback_path, check_hosts, discover_sinks
from lva_core.delivery.factory import open_outbox
from lva_core.delivery.service import Delivery, FindStream
from lva_core.delivery.settings import DeliverySettings
from lva_core.events.bus import EventBus
from lva_core.events.messages import StreamEvent
from lva_core.images.store import ImageStore
from lva_core.pipeline.routing import ModelRouter
from lva_core.pipeline.settings import StreamSettings
from lva_core.pipeline.worker import BoundAnalytic, StreamWorker
from lva_core.streams.record import Ownership, StreamRecord
from lva_core.streams.spec import StreamSpec
from lva_core.streams.state import USER_TARGETS, Status
from lva_core.streams.store.base import StoreError, StreamStore
from lva_core.streams.store.sqlite import SqliteStreamStore
from lva_core.streams.validation import (
    MAX_DESCRIPTION,
    MAX_NAME,
    body_uuid,
    check_text,
    validate_analytics,
    validate_autorestart,
    validate_data,
)

log = logging.getLogger("lva_core.streams")

# Running, or about to: a resume of these changes nothing.
RUNNING = frozenset({Status.PENDING, Status.IN_PROGRESS})


T = TypeVar("T")


def lookup_ids(stream_id: str, account_id: str) -> tuple[str, str]:
    """The canonical stream id and account of a lookup (12012 for a malformed one)."""
    return query_uuid(stream_id, "stream_id"), query_uuid(account_id, "account_id") if account_id else ""


def visible(found: StreamRecord | None, stream_id: str, account_id: str) -> StreamRecord:
    """``found``, unless it is missing or another account's: both answer 404 alike, so that
    nothing leaks."""
    if found is None or (account_id and found.account_id != account_id):
        raise LunaError(OBJECT_NOT_FOUND, f"stream {stream_id} not found")
    return found


def page_query(account_id: str, page: int, page_size: int) -> tuple[str, int, int]:
    """A list's account, page and page size, checked, with LUNA's defaults (page 1 of 100, at
    most 1000)."""
    if page < 0 or page_size < 0:
        raise LunaError(BAD_QUERY, "page and page_size must not be negative")
    account_id = query_uuid(account_id, "account_id") if account_id else ""
    return account_id, page or 1, min(page_size or 100, 1000)


@dataclass(frozen=True)
class Located:
    """A stream and where it runs: here (``local``: live statistics, the local event bus), or at
    the agent ``endpoint`` of a fleet, or nowhere (``endpoint`` empty)."""

    record: StreamRecord
    local: bool
    endpoint: str = ""


class StreamManager:
    # Where the workers store their events' images (CoreServer sets it); None: images.path is
    # empty, and events carry null in their place.
    images: ImageStore | None = None

    def __init__(
        self,
        config: dict[str, Any],
        router: ModelRouter,
        bus: EventBus,
        catalogue: Mapping[str, Analytic],
        store: StreamStore | None = None,
    ) -> None:
        self.settings = StreamSettings.from_config(config)
        self.router = router
        self.bus = bus
        self.catalogue = dict(catalogue)
        self.records: dict[str, StreamRecord] = {}
        self.workers: dict[str, StreamWorker] = {}
        # Without a store of its own (unit tests) nothing outlives the process.
        self.store: StreamStore = store if store is not None else SqliteStreamStore()
        # This core's agent id (fleet/identity.py), known once its port is bound.
        self.agent_id = ""
        # The workers' per-frame check (a fleet's lease); None: a single core always may read.
        self.gate: Callable[[], bool] | None = None
        # Outbound events: every analytic's callbacks, through the store's outbox.
        self.sinks = discover_sinks(config)
        self.delivery = Delivery(
            open_outbox(self.store), self.sinks, DeliverySettings.from_config(config), self._find_stream()
        )

    def _find_stream(self) -> FindStream:
        """How delivery finds a stream by id: this registry (a fleet reads the shared store)."""

        async def find(stream_id: str) -> StreamRecord | None:
            return self.records.get(stream_id)

        return find

    # ------------------------------------------------------------------ the workers' reporter

    def publish(self, record: StreamRecord, results: Mapping[str, Any]) -> None:
        self.bus.publish(record.stream_id, StreamEvent.of(record, results))
        for analytic, event in results.items():
            self.delivery.submit(record, analytic, event)

    def set_status(self, record: StreamRecord, status: Status, error: str | None) -> None:
        if record.status is status and record.error == error:
            return
        record.transition(status, error)
        self.store.note_status(record)
        log.info("stream %s -> %s%s", record.stream_id, status.value, f" ({error})" if error else "")
        self.bus.publish(record.stream_id, StreamEvent.of(record))

    # ------------------------------------------------------------------ lifecycle

    def _start_worker(self, record: StreamRecord) -> None:
        if record.owner is None and self.agent_id:
            # A single core is the one agent that runs its streams (a fleet's records come
            # with their owner from the store).
            record.owner = Ownership(self.agent_id, 0, 0)
        analytics = []
        for spec in record.analytics:
            analytic = self.catalogue[spec.name]
            # Callbacks are the engine's: the analytic gets only its own parameters.
            own = {k: v for k, v in spec.parameters.items() if k != PARAMETER}
            analytics.append(BoundAnalytic(spec.name, analytic, own, self.router.infer_for(analytic)))
        worker = StreamWorker(record, analytics, self, self.settings, self.gate, self.images)
        self.workers[record.stream_id] = worker
        worker.start()

    async def _stop_worker(self, stream_id: str) -> None:
        worker = self.workers.pop(stream_id, None)
        if worker is not None:
            await worker.stop()

    async def create(self, spec: StreamSpec) -> StreamRecord:
        record = self._new_record(spec)
        await self._check_callback_hosts(record)
        # Committed before the API answers: a stream the user was told exists survives a crash.
        await self._persist(self.store.insert(record))
        self._created(record)
        log.info("stream %s created (%s)", record.stream_id, record.status.value)
        return record

    def _created(self, record: StreamRecord) -> None:
        self.records[record.stream_id] = record
        if record.status is Status.PENDING:
            self._start_worker(record)

    def _new_record(self, spec: StreamSpec) -> StreamRecord:
        """A validated new stream (LunaError otherwise); not stored yet."""
        account_id = body_uuid(spec.account_id, "account_id") if spec.account_id else ""
        check_text(spec.name, "name", MAX_NAME)
        check_text(spec.description, "description", MAX_DESCRIPTION)
        if spec.data is None:
            raise invalid("data", "is required")
        status = spec.status or Status.PENDING
        if status not in (Status.PENDING, Status.PAUSE):
            raise invalid("status", "a new stream is pending or pause")
        record = StreamRecord(
            stream_id=str(uuid.uuid4()),
            account_id=account_id,
            name=spec.name,
            description=spec.description,
            data=validate_data(spec.data, list(self.settings.allowed_dirs)),
            analytics=validate_analytics(spec.analytics, self.catalogue, self.sinks),
            autorestart=validate_autorestart(spec.autorestart),
            status=status,
        )
        return record

    async def _check_callback_hosts(self, record: StreamRecord) -> None:
        """A callback's host that does not resolve is refused now (400), not failed on later."""
        callbacks = [
            (callback_path(i, j), callback)
            for i, spec in enumerate(record.analytics)
            for j, callback in enumerate(spec.parameters.get(PARAMETER) or ())
        ]
        if callbacks:
            await check_hosts(callbacks, self.sinks)

    async def locate(self, stream_id: str, account_id: str = "") -> Located:
        """The stream (LunaError 12012/404 as in get) and where it runs: here, on a single core."""
        return Located(await self.get(stream_id, account_id), local=True)

    async def get(self, stream_id: str, account_id: str = "") -> StreamRecord:
        stream_id, account_id = lookup_ids(stream_id, account_id)
        return visible(self.records.get(stream_id), stream_id, account_id)

    async def list(
        self, account_id: str, status: Status | None, page: int, page_size: int
    ) -> tuple[list[StreamRecord], int]:
        account_id, page, page_size = page_query(account_id, page, page_size)
        matching = [
            r
            for r in self.records.values()
            if (not account_id or r.account_id == account_id) and (status is None or r.status is status)
        ]
        start = (page - 1) * page_size
        return matching[start : start + page_size], len(matching)

    async def update(self, stream_id: str, target: Status, account_id: str = "") -> StreamRecord:
        record = await self.get(stream_id, account_id)  # another account's stream: not found, as in get
        stream_id = record.stream_id  # the canonical form, whatever the caller's case
        if target not in USER_TARGETS:
            raise invalid("status", "must be pause or pending")
        if record.status is target or (target is Status.PENDING and record.status in RUNNING):
            # Asked again for the state it is in or heading to: nothing to do, and no error,
            # however the timing of the worker falls (a resume repeated while it connects).
            return record
        if target is Status.PAUSE:
            self.set_status(record, Status.PAUSE, None)  # checks the transition first
            await self._stop_worker(stream_id)
        else:
            missing = [spec.name for spec in record.analytics if spec.name not in self.catalogue]
            if missing:
                # Kept after a restart without its plugin (load()); it can run once the analytic is back.
                raise LunaError(CONFLICT, f"analytic {missing[0]} is not available in this core")
            # From restart this is "retry now": the worker waiting out its backoff is replaced by
            # one that connects at once, with the whole attempt budget.
            self.set_status(record, Status.PENDING, None)
            await self._stop_worker(stream_id)
            self._start_worker(record)
        await self._persist(self.store.save_status(record))  # a pause must survive a crash too
        return record

    async def delete(self, stream_id: str, account_id: str = "") -> None:
        stream_id = (await self.get(stream_id, account_id)).stream_id  # checks the owner; the canonical id
        await self._persist(self.store.delete(stream_id))  # first: a failed delete changes nothing
        await self._stop_worker(stream_id)
        del self.records[stream_id]
        await self.delivery.forget(stream_id)
        self.bus.close_stream(stream_id, StreamEvent(Status.STOP, "stream deleted"))
        log.info("stream %s deleted", stream_id)

    async def drain(self) -> None:
        """SIGTERM, before the API stops: a fleet's agent hands its streams over here; a single
        core keeps them running until close()."""
        return None

    async def start_delivery(self) -> None:
        """Lanes for what the outbox still holds (a previous run's undelivered events)."""
        await self.delivery.start()

    async def close(self) -> None:
        for stream_id in list(self.workers):
            await self._stop_worker(stream_id)
        # After the workers (their last events are in the outbox), before the store closes.
        await self.delivery.close()
        # After the workers: their last status changes are written before the file closes.
        await self.store.close()

    # ------------------------------------------------------------------ persistence

    async def _persist(self, work: Awaitable[T]) -> T:
        """A store call of the API's: its failure is a LUNA error (INTERNAL), logged."""
        try:
            return await work
        except StoreError as exc:
            log.error("stream store: %s", exc)
            raise LunaError(INTERNAL, f"the stream store failed: {exc}") from None

    def load(self) -> None:
        """The stored streams, at start-up. Active ones come back as pending; resume() starts them.

        Paused, done and failed streams stay as they are, with their error.
        """
        for record in self.store.load():
            if record.status.active:
                # Not a transition: no worker ran in this process; the stream starts over.
                missing = [spec.name for spec in record.analytics if spec.name not in self.catalogue]
                if missing:
                    # Kept, not dropped: it runs again when the analytic is back and the user resumes it.
                    record.status = Status.FAILURE
                    record.error = f"analytic {missing[0]} is not available in this core"
                else:
                    record.status, record.error = Status.PENDING, None
                record.last_update_time = time.time()
                self.store.note_status(record)
            # Stores written before ids were canonical may hold an upper-case account.
            record.account_id = canonical_uuid(record.account_id) or record.account_id
            self.records[record.stream_id] = record
        if self.store.persistent:
            log.info("stream store %s: %d streams loaded", self.store.location, len(self.records))
        else:
            log.info("stream store in memory: streams are lost when the core stops (streams.store_path)")

    def resume(self) -> None:
        """Start the pending streams that have no worker: the ones load() brought back."""
        for record in list(self.records.values()):
            if record.status is Status.PENDING and record.stream_id not in self.workers:
                log.info("stream %s resumed", record.stream_id)
                self._start_worker(record)
