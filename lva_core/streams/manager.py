"""The stream registry and lifecycle: create, get, list, pause/resume, delete; one worker each."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lva.v1 import streams_pb2
from lva_common.errors import BAD_JSON, BAD_QUERY, CONFLICT, INTERNAL, OBJECT_NOT_FOUND, LunaError
from lva_core.analytics.base import Analytic, InferFn
from lva_core.events.bus import EventBus, Message
from lva_core.inference.service import Inference
from lva_core.pipeline.worker import StreamWorker
from lva_core.streams.record import StreamRecord
from lva_core.streams.state import USER_TARGETS, Status
from lva_core.streams.store import StoreError, StreamStore
from lva_core.streams.validation import (
    check_uuid,
    invalid,
    validate_analytics,
    validate_autorestart,
    validate_data,
)

log = logging.getLogger("lva_core.streams")


def status_message(record: StreamRecord, results: Mapping[str, Any] | None = None) -> Message:
    """The seed's message shape."""
    return {
        "stream_status": record.status.value,
        "error": record.error,
        "analytics_results": dict(results or {}),
    }


class StreamManager:
    def __init__(
        self,
        config: dict[str, Any],
        inference: Inference,
        bus: EventBus,
        catalogue: Mapping[str, Analytic],
        store: StreamStore | None = None,
    ) -> None:
        streams = config.get("streams") or {}
        self.timeouts = {
            "open_timeout": float(streams.get("open_timeout", 5.0)),
            "read_timeout": float(streams.get("read_timeout", 5.0)),
            "probe_duration": float(streams.get("probe_duration", 0.25)),
        }
        self.buffer_size = int(streams.get("buffer_size", 2))
        dirs = streams.get("allowed_file_dirs")
        # An empty list allows no local file at all (network sources only); see docs/security.md.
        self.allowed_dirs = [Path(d) for d in dirs or []]
        self.models: dict[str, Any] = dict(config["triton"].get("models") or {})
        self.inference = inference
        self.bus = bus
        self.catalogue = dict(catalogue)
        self.records: dict[str, StreamRecord] = {}
        self.workers: dict[str, StreamWorker] = {}
        # Without a store of its own (unit tests) nothing outlives the process.
        self.store = store if store is not None else StreamStore()

    # ------------------------------------------------------------------ events

    def publish(self, record: StreamRecord, results: Mapping[str, Any]) -> None:
        self.bus.publish(record.stream_id, status_message(record, results))

    def set_status(self, record: StreamRecord, status: Status, error: str | None) -> None:
        if record.status is status and record.error == error:
            return
        record.transition(status, error)
        self.store.note_status(record)
        log.info("stream %s -> %s%s", record.stream_id, status.value, f" ({error})" if error else "")
        self.bus.publish(record.stream_id, status_message(record))

    def infer_for(self, analytic: Analytic) -> InferFn:
        roles = self.models.get(analytic.name) or {}

        async def infer(
            role: str, inputs: Mapping[str, np.ndarray[Any, Any]]
        ) -> dict[str, np.ndarray[Any, Any]]:
            model = roles.get(role)
            if model is None:
                raise LunaError(BAD_JSON, f"no model configured for {analytic.name}.{role} (triton.models)")
            return await self.inference.batcher(str(model)).infer(inputs)

        return infer

    # ------------------------------------------------------------------ lifecycle

    def _start_worker(self, record: StreamRecord) -> None:
        analytics = [(spec.name, self.catalogue[spec.name], spec.parameters) for spec in record.analytics]
        worker = StreamWorker(
            record, analytics, self.infer_for, self.publish, self.set_status, self.timeouts, self.buffer_size
        )
        self.workers[record.stream_id] = worker
        worker.start()

    async def _stop_worker(self, stream_id: str) -> None:
        worker = self.workers.pop(stream_id, None)
        if worker is not None:
            await worker.stop()

    async def create(self, request: streams_pb2.CreateStreamRequest) -> StreamRecord:
        if request.account_id:
            check_uuid(request.account_id, "account_id")
        if not request.HasField("data"):
            raise invalid("data", "is required")
        status = Status.PENDING
        if request.status != streams_pb2.STREAM_STATUS_UNSPECIFIED:
            status = Status.from_proto(request.status)
            if status not in (Status.PENDING, Status.PAUSE):
                raise invalid("status", "a new stream is pending or pause")
        record = StreamRecord(
            stream_id=str(uuid.uuid4()),
            account_id=request.account_id,
            name=request.name,
            description=request.description,
            data=validate_data(request.data, self.allowed_dirs),
            analytics=validate_analytics(list(request.analytics), self.catalogue),
            autorestart=validate_autorestart(request),
            status=status,
        )
        # Committed before the API answers: a stream the user was told exists survives a crash.
        await self._persist(self.store.insert(record))
        self.records[record.stream_id] = record
        if status is Status.PENDING:
            self._start_worker(record)
        log.info("stream %s created (%s)", record.stream_id, status.value)
        return record

    def get(self, stream_id: str, account_id: str = "") -> StreamRecord:
        try:
            uuid.UUID(stream_id)
        except ValueError:
            raise LunaError(BAD_QUERY, f"stream_id {stream_id!r} is not a UUID") from None
        record = self.records.get(stream_id)
        # Another account's stream answers exactly like a missing one: nothing leaks.
        if record is None or (account_id and record.account_id != account_id):
            raise LunaError(OBJECT_NOT_FOUND, f"stream {stream_id} not found")
        return record

    def list(
        self, account_id: str, status: Status | None, page: int, page_size: int
    ) -> tuple[list[StreamRecord], int]:
        if page < 0 or page_size < 0:
            raise LunaError(BAD_QUERY, "page and page_size must not be negative")
        page, page_size = page or 1, min(page_size or 100, 1000)
        matching = [
            r
            for r in self.records.values()
            if (not account_id or r.account_id == account_id) and (status is None or r.status is status)
        ]
        start = (page - 1) * page_size
        return matching[start : start + page_size], len(matching)

    async def update(self, stream_id: str, target: Status, account_id: str = "") -> StreamRecord:
        record = self.get(stream_id, account_id)  # another account's stream: not found, as in get
        if target not in USER_TARGETS:
            raise invalid("status", "must be pause or pending")
        if record.status is target:
            return record
        if target is Status.PAUSE:
            self.set_status(record, Status.PAUSE, None)  # checks the transition first
            await self._stop_worker(stream_id)
        else:
            missing = [spec.name for spec in record.analytics if spec.name not in self.catalogue]
            if missing:
                # Kept after a restart without its plugin (load()); it can run once the analytic is back.
                raise LunaError(CONFLICT, f"analytic {missing[0]} is not available in this core")
            self.set_status(record, Status.PENDING, None)
            await self._stop_worker(stream_id)
            self._start_worker(record)
        await self._persist(self.store.save_status(record))  # a pause must survive a crash too
        return record

    async def delete(self, stream_id: str, account_id: str = "") -> None:
        record = self.get(stream_id, account_id)
        await self._persist(self.store.delete(stream_id))  # first: a failed delete changes nothing
        await self._stop_worker(stream_id)
        del self.records[stream_id]
        final = status_message(record)
        final["stream_status"] = Status.STOP.value
        final["error"] = "stream deleted"
        self.bus.close_stream(stream_id, final)
        log.info("stream %s deleted", stream_id)

    async def close(self) -> None:
        for stream_id in list(self.workers):
            await self._stop_worker(stream_id)
        # After the workers: their last status changes are written before the file closes.
        await self.store.close()

    # ------------------------------------------------------------------ persistence

    async def _persist(self, write: Awaitable[None]) -> None:
        try:
            await write
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
            self.records[record.stream_id] = record
        if self.store.persistent:
            log.info("stream store %s: %d streams loaded", self.store.path, len(self.records))
        else:
            log.info("stream store in memory: streams are lost when the core stops (streams.store_path)")

    def resume(self) -> None:
        """Start the pending streams that have no worker: the ones load() brought back."""
        for record in list(self.records.values()):
            if record.status is Status.PENDING and record.stream_id not in self.workers:
                log.info("stream %s resumed", record.stream_id)
                self._start_worker(record)
