"""Per-model batching across streams: a batch leaves as soon as the model has a free slot.

Every stream's frames for one model go through one ModelBatcher. It keeps at most
``max_in_flight`` requests at Triton; items that arrive while every slot is busy wait and leave
together in the next batch (up to ``max_batch``). So a lone stream's frame never waits for
company it will not get, and under load batches grow by themselves ("continuous batching").
``max_delay`` (0 by default) makes a batch that is not full linger for more items first, for
models where a bigger batch is worth the wait (GPU networks).

Items of equal per-item shapes are stacked into one request, written straight into the staged
(shared-memory) arrays: the only copy of a frame on its way to Triton (a frame in its model's
declared format writes itself there: ``Writable``). Queues are bounded; an
item whose deadline passes while it waits fails with DEADLINE instead of being sent late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lva_common.aio import wait_within
from lva_common.errors import DEADLINE, TRITON_UNAVAILABLE
from lva_core.inference.client import InferenceError, TritonClient, classify
from lva_core.inference.frame_format import FrameFormat, frame_format
from lva_core.inference.model_info import ModelInfo
from lva_core.metrics.instruments import BATCH_SIZE, BATCH_WAIT, INFERENCE_ERRORS, INFERENCE_LATENCY

log = logging.getLogger("lva_core.inference")

Arrays = dict[str, np.ndarray[Any, Any]]


class Writable(Protocol):
    """An input that writes itself into its request slot: a frame in its model's format
    (lva_core.pipeline.pixels.ImageInput), copied once, straight from the decoder's buffers."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def write(self, out: np.ndarray[Any, Any]) -> None: ...


class FrameSource(Protocol):
    """A frame's picture (lva_core.pipeline.pixels.Pixels): it becomes the model's input in the
    format the model declares in its config.pbtxt (frame_format.py)."""

    def input(self, fmt: FrameFormat) -> Writable: ...


Input = np.ndarray[Any, Any] | Writable


def _put(out: np.ndarray[Any, Any], value: Input) -> None:
    if isinstance(value, np.ndarray):
        out[...] = value
    else:
        value.write(out)


@dataclass
class _Item:
    inputs: Mapping[str, Input]
    deadline: float
    future: asyncio.Future[Arrays]
    queued_at: float = field(default_factory=time.monotonic)
    key: tuple[tuple[str, tuple[int, ...]], ...] = field(init=False)

    def __post_init__(self) -> None:
        self.key = tuple(sorted((name, tuple(a.shape)) for name, a in self.inputs.items()))


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    failed: int = 0
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1000))


class ModelBatcher:
    def __init__(
        self,
        client: TritonClient,
        model_name: str,
        *,
        max_batch: int = 8,
        max_delay: float = 0.0,
        queue_size: int = 64,
        max_in_flight: int = 2,
        timeout: float = 5.0,
    ) -> None:
        self.client = client
        self.model_name = model_name
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.timeout = timeout
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(queue_size)
        self._carry: deque[_Item] = deque()
        self._free_slots = max_in_flight
        # Set when an item arrives or a slot frees: the two things the worker waits for.
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None
        self._format: tuple[ModelInfo, FrameFormat] | None = None

    async def frame_format(self) -> FrameFormat:
        """The model's declared frame format, read again after a reload (a new ModelInfo)."""
        info = await self.client.model_info(self.model_name)
        if self._format is None or self._format[0] is not info:
            self._format = (info, frame_format(info))
        return self._format[1]

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name=f"batcher:{self.model_name}")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for item in [*self._carry, *_drain(self._queue)]:
            if not item.future.done():
                item.future.set_exception(InferenceError(TRITON_UNAVAILABLE, "inference stopped"))

    async def infer(self, inputs: Mapping[str, Input | FrameSource], timeout: float | None = None) -> Arrays:
        """Outputs for one item (per-item arrays, no batch dimension)."""
        self.start()
        budget = timeout or self.timeout
        deadline = time.monotonic() + budget
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        ready: dict[str, Input] | None = None
        try:
            async with asyncio.timeout(budget):
                # Within the budget: reading the model's frame format is the item's first talk
                # with Triton, and a Triton that does not answer must cost no more than a send.
                ready = await self._ready(inputs)
                await self._queue.put(_Item(ready, deadline, future))  # bounded: pushes back
                self._wake.set()
                return await asyncio.shield(future)
        except TimeoutError:
            if ready is None:  # Triton did not say what the model takes: a failed request
                INFERENCE_ERRORS.labels(self.model_name, str(DEADLINE.code)).inc()
            raise InferenceError(DEADLINE, f"{self.model_name}: no result within {budget:.1f} s") from None
        finally:
            if not future.done():
                future.cancel()  # tells the worker not to send it

    async def _ready(self, inputs: Mapping[str, Input | FrameSource]) -> dict[str, Input]:
        """The inputs with each frame in the model's declared format. A failure to learn the
        format is the request's failure: typed and counted like one that reached Triton."""
        ready: dict[str, Input] = {}
        for key, value in inputs.items():
            if isinstance(value, np.ndarray) or not hasattr(value, "input"):
                ready[key] = value
                continue
            try:
                fmt = await self.frame_format()
            except Exception as exc:
                error = classify(exc, f"inference on {self.model_name}")
                INFERENCE_ERRORS.labels(self.model_name, str(error.code)).inc()
                raise error from None
            ready[key] = value.input(fmt)
        return ready

    def _collect(self) -> list[_Item]:
        """Up to max_batch waiting items of the first one's shapes; the others wait in order."""
        batch: list[_Item] = []
        held: list[_Item] = []
        while len(batch) < self.max_batch:
            if self._carry:
                item = self._carry.popleft()
            elif not self._queue.empty():
                item = self._queue.get_nowait()
            else:
                break
            if item.future.done():
                continue  # its caller gave up
            (batch if not batch or item.key == batch[0].key else held).append(item)
        self._carry.extendleft(reversed(held))
        now = time.monotonic()
        live = []
        wait = BATCH_WAIT.labels(self.model_name)
        for item in batch:
            wait.observe(now - item.queued_at)
            if item.deadline <= now:
                item.future.set_exception(
                    InferenceError(DEADLINE, f"{self.model_name}: deadline passed in queue")
                )
            else:
                live.append(item)
        return live

    def _waiting(self) -> int:
        return len(self._carry) + self._queue.qsize()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._free_slots > 0 and self._waiting():
                if self.max_delay > 0 and self._waiting() < self.max_batch:
                    await self._linger()
                batch = self._collect()
                if not batch:
                    continue
                self._free_slots -= 1
                task = asyncio.create_task(self._send(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _linger(self) -> None:
        """Wait up to max_delay for the waiting items to fill a batch."""
        close_at = time.monotonic() + self.max_delay
        while self._waiting() < self.max_batch:
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await wait_within(self._wake.wait(), remaining)

    async def _send(self, items: list[_Item]) -> None:
        try:
            model = await self.client.model_info(self.model_name)
            size = min(len(items), model.max_batch_size) if model.batches else 1
            # A model that cannot batch (or batches less) gets several requests.
            for start in range(0, len(items), size):
                await self._send_one(model, items[start : start + size])
        except Exception as exc:  # every waiter must learn of the failure, typed
            error = classify(exc, f"inference on {self.model_name}")
            INFERENCE_ERRORS.labels(self.model_name, str(error.code)).inc()
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error)
            self.stats.failed += len(items)
        finally:
            self._free_slots += 1
            self._wake.set()

    async def _send_one(self, model: Any, items: list[_Item]) -> None:
        shapes = {name: tuple(a.shape) for name, a in items[0].inputs.items()}
        staged = await self.client.stage(model, shapes, len(items))
        try:
            for index, item in enumerate(items):
                for name, array in item.inputs.items():
                    _put(staged.inputs[name][index] if model.batches else staged.inputs[name], array)
            remaining = max(0.05, min(i.deadline for i in items) - time.monotonic())
            started = time.perf_counter()
            outputs = await self.client.infer_staged(staged, remaining)
            INFERENCE_LATENCY.labels(self.model_name).observe(time.perf_counter() - started)
            BATCH_SIZE.labels(self.model_name).observe(len(items))
        finally:
            await self.client.release(staged)
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.sizes.append(len(items))
        for index, item in enumerate(items):
            if not item.future.done():
                per_item = {name: out[index] if model.batches else out for name, out in outputs.items()}
                item.future.set_result(per_item)


def _drain(queue: asyncio.Queue[_Item]) -> list[_Item]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
