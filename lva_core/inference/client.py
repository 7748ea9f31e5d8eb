"""The core's async Triton client: typed errors, deadlines, shared memory or plain tensors.

Shared memory is used when Triton runs on this machine (it maps the same /dev/shm); a remote
Triton gets plain gRPC tensors. Either way the caller stages inputs into arrays the client hands
out (``stage``), so that frames are written once, straight into the memory Triton reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from lva_common.aio import wait_within
from lva_common.errors import (
    CONFLICT,
    DEADLINE,
    MODEL_ERROR,
    MODEL_NOT_FOUND,
    TRITON_UNAVAILABLE,
    ErrorSpec,
    LunaError,
)
from lva_core.inference.model_info import ModelInfo, model_info_from_json
from lva_core.inference.shm import Region, ShmPool, cleanup_dead_regions, owner_is_dead

log = logging.getLogger("lva_core.inference")
_ALIGN = 64


class InferenceError(LunaError):
    """A model or Triton failure, typed by its LUNA code, for the stream engine to report."""


def classify(exc: BaseException, what: str) -> InferenceError:
    if isinstance(exc, InferenceError):
        return exc
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return InferenceError(DEADLINE, f"{what}: no answer from Triton within the deadline")
    status = str(exc.status() or "") if isinstance(exc, InferenceServerException) else ""
    message = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
    message = message or type(exc).__name__
    lowered = message.lower()
    spec: ErrorSpec
    if "DEADLINE_EXCEEDED" in status:
        spec = DEADLINE
    elif (
        "unknown model" in lowered or ("not found" in lowered and "model" in lowered) or "NOT_FOUND" in status
    ):
        spec = MODEL_NOT_FOUND
    elif "polling is enabled" in lowered or "not allowed" in lowered:
        spec = CONFLICT
    elif "UNAVAILABLE" in status and (
        "connect" in lowered or "socket" in lowered or "unavailable" in lowered
    ):
        spec = TRITON_UNAVAILABLE
    else:
        spec = MODEL_ERROR
    return InferenceError(spec, f"{what}: {message}")


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


@dataclass
class Staged:
    """Input arrays for one request, to be filled by the caller; views into shared memory if any."""

    model: ModelInfo
    batch: int
    inputs: dict[str, np.ndarray[Any, Any]]
    region: Region | None = None
    offsets: dict[str, int] = field(default_factory=dict)
    output_offsets: dict[str, int] = field(default_factory=dict)


def _batched_shape(model: ModelInfo, tensor_shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
    return (batch, *tensor_shape) if model.batches else tensor_shape


class TritonClient:
    def __init__(self, url: str, *, shared_memory: bool, pool_bytes: int, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.shared_memory = shared_memory
        self.pool = ShmPool(pool_bytes) if shared_memory else None
        self._client: grpcclient.InferenceServerClient | None = None
        self._infos: dict[str, ModelInfo] = {}
        self._swept = False  # whether _forget_dead_cores ran against the current Triton

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    async def start(self) -> None:
        if self.shared_memory:
            removed = cleanup_dead_regions()
            if removed:
                log.info("removed %d shared-memory regions left by dead cores", len(removed))

    async def close(self) -> None:
        if self.pool is not None:
            for region in self.pool.regions:
                with contextlib.suppress(Exception):
                    await wait_within(self.client.unregister_system_shared_memory(region.name), 2)
            self.pool.close()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _call(self, what: str, coro: Any, timeout: float | None = None) -> Any:
        # wait_within on top of the gRPC deadline: a call must end even if the channel is stuck.
        try:
            return await wait_within(coro, (timeout or self.timeout) + 1.0)
        except (InferenceServerException, TimeoutError, OSError) as exc:
            raise classify(exc, what) from None

    # ------------------------------------------------------------ model metadata and control

    async def model_info(self, name: str, refresh: bool = False) -> ModelInfo:
        if refresh or name not in self._infos:
            meta = await self._call(
                f"metadata of {name}",
                self.client.get_model_metadata(name, as_json=True, client_timeout=self.timeout),
            )
            config = await self._call(
                f"config of {name}",
                self.client.get_model_config(name, as_json=True, client_timeout=self.timeout),
            )
            self._infos[name] = model_info_from_json(meta, config)
        return self._infos[name]

    async def repository_index(self) -> list[dict[str, Any]]:
        index = await self._call(
            "repository index",
            self.client.get_model_repository_index(as_json=True, client_timeout=self.timeout),
        )
        return list(index.get("models", []))

    async def load_model(self, name: str) -> None:
        self._infos.pop(name, None)
        # Loading runs model code (initialize) and may take long: a generous deadline.
        await self._call(
            f"load {name}", self.client.load_model(name, client_timeout=self.timeout * 6), self.timeout * 6
        )

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        self._infos.pop(name, None)
        await self._call(
            f"unload {name}",
            self.client.unload_model(name, unload_dependents=unload_dependents, client_timeout=self.timeout),
        )

    async def statistics(self, name: str) -> dict[str, Any]:
        stats = await self._call(
            f"statistics of {name}",
            self.client.get_inference_statistics(name, as_json=True, client_timeout=self.timeout),
        )
        return dict(stats)

    # ------------------------------------------------------------ inference

    async def stage(self, model: ModelInfo, shapes: Mapping[str, tuple[int, ...]], batch: int) -> Staged:
        """Arrays to fill for a request of ``batch`` items whose per-item input shapes are ``shapes``."""
        full = {name: _batched_shape(model, shape, batch) for name, shape in shapes.items()}
        if self.pool is None:
            arrays = {name: np.empty(shape, model.input(name).dtype) for name, shape in full.items()}
            return Staged(model, batch, arrays)
        offsets: dict[str, int] = {}
        total = 0
        for name, shape in full.items():
            offsets[name] = total
            total += _aligned(int(np.prod(shape, dtype=np.int64)) * model.input(name).dtype.itemsize)
        output_offsets: dict[str, int] = {}
        if all(t.fixed for t in model.outputs):
            for tensor in model.outputs:
                output_offsets[tensor.name] = total
                total += _aligned(tensor.item_bytes() * (batch if model.batches else 1))
        region = await self.pool.acquire(total)
        arrays = {
            name: region.array(model.input(name).dtype, shape, offsets[name]) for name, shape in full.items()
        }
        return Staged(model, batch, arrays, region, offsets, output_offsets)

    async def release(self, staged: Staged) -> None:
        if staged.region is not None and self.pool is not None:
            await self.pool.release(staged.region)
            staged.region = None

    async def _forget_dead_cores(self) -> None:
        """Unregister the regions Triton still holds for cores that died.

        A killed core never unregisters its regions, and Triton keeps them mapped (up to
        ``shm_pool_mb`` per crash) for as long as it runs. Swept once per Triton this client
        talks to, before its own first registration; only regions whose process is gone, since
        other live cores may share the Triton.
        """
        status = await self.client.get_system_shared_memory_status(as_json=True, client_timeout=self.timeout)
        regions = status.get("regions") or {}
        names = list(regions) if isinstance(regions, dict) else [str(r.get("name", "")) for r in regions]
        dead = [name for name in names if owner_is_dead(name)]
        for name in dead:
            with contextlib.suppress(InferenceServerException):
                await self.client.unregister_system_shared_memory(name, client_timeout=self.timeout)
        if dead:
            log.info("unregistered %d shared-memory regions Triton held for dead cores", len(dead))

    async def _register(self, region: Region) -> None:
        assert self.pool is not None
        if not self._swept:
            self._swept = True
            with contextlib.suppress(InferenceServerException):
                await self._forget_dead_cores()
        with contextlib.suppress(InferenceServerException):
            await self.client.unregister_system_shared_memory(region.name, client_timeout=self.timeout)
        await self.client.register_system_shared_memory(
            region.name, region.key, region.size, client_timeout=self.timeout
        )
        self.pool.unregistered.discard(region.name)

    async def _sync_registrations(self, region: Region) -> None:
        assert self.pool is not None
        for retired in self.pool.take_retired():
            with contextlib.suppress(InferenceServerException):
                await self.client.unregister_system_shared_memory(retired.name, client_timeout=self.timeout)
            retired.close()
        if region.name in self.pool.unregistered:
            await self._register(region)

    def _request(self, staged: Staged) -> tuple[list[Any], list[Any]]:
        model = staged.model
        inputs = []
        for name, array in staged.inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), model.input(name).datatype)
            if staged.region is not None:
                tensor.set_shared_memory(staged.region.name, array.nbytes, staged.offsets[name])
            else:
                tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = []
        for out in model.outputs:
            requested = grpcclient.InferRequestedOutput(out.name)
            if staged.region is not None and out.name in staged.output_offsets:
                nbytes = out.item_bytes() * (staged.batch if model.batches else 1)
                requested.set_shared_memory(staged.region.name, nbytes, staged.output_offsets[out.name])
            outputs.append(requested)
        return inputs, outputs

    def _read_outputs(self, staged: Staged, result: Any) -> dict[str, np.ndarray[Any, Any]]:
        model = staged.model
        outputs: dict[str, np.ndarray[Any, Any]] = {}
        for out in model.outputs:
            if staged.region is not None and out.name in staged.output_offsets:
                shape = _batched_shape(model, out.dims, staged.batch)
                # Copied out: the region is reused by the next request as soon as it is released.
                outputs[out.name] = np.array(
                    staged.region.array(out.dtype, shape, staged.output_offsets[out.name])
                )
            else:
                outputs[out.name] = result.as_numpy(out.name)
        return outputs

    async def infer_staged(
        self, staged: Staged, timeout: float | None = None
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run the model on staged inputs; the outputs are the caller's (copies)."""
        deadline = timeout or self.timeout
        what = f"inference on {staged.model.name}"
        for attempt in (1, 2):
            try:
                if staged.region is not None:
                    await self._call(what, self._sync_registrations(staged.region), deadline)
                inputs, outputs = self._request(staged)
                result = await self._call(
                    what,
                    self.client.infer(staged.model.name, inputs, outputs=outputs, client_timeout=deadline),
                    deadline,
                )
                return self._read_outputs(staged, result)
            except InferenceError as error:
                lost_registration = (
                    "shared memory" in error.detail.lower() and "region" in error.detail.lower()
                )
                if self.pool is not None and (lost_registration or error.spec is TRITON_UNAVAILABLE):
                    # Triton restarted (or is restarting): its registrations are gone.
                    self.pool.unregistered.update(r.name for r in self.pool.regions)
                    self._swept = False  # another Triton may be there when it comes back
                if attempt == 1 and lost_registration:
                    continue
                raise
        raise AssertionError("unreachable")

    async def infer(
        self, model_name: str, inputs: Mapping[str, np.ndarray[Any, Any]], timeout: float | None = None
    ) -> dict[str, np.ndarray[Any, Any]]:
        """One request of already batched arrays (tests, tools); the batcher uses stage/infer_staged."""
        model = await self.model_info(model_name)
        batch = next(iter(inputs.values())).shape[0] if model.batches else 1
        shapes = {name: tuple(a.shape[1:]) if model.batches else tuple(a.shape) for name, a in inputs.items()}
        staged = await self.stage(model, shapes, batch)
        try:
            for name, array in inputs.items():
                staged.inputs[name][...] = array
            return await self.infer_staged(staged, timeout)
        finally:
            await self.release(staged)
