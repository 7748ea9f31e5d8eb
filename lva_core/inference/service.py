"""The core's one entry to inference: a Triton client and one batcher per model, from the config."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from lva_common.config import section
from lva_core.inference.batcher import ModelBatcher
from lva_core.inference.client import TritonClient


def _is_local(url: str) -> bool:
    host = url.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def use_shared_memory(triton: dict[str, Any]) -> bool:
    """auto: system shared memory when Triton is on this machine (it must see our /dev/shm)."""
    mode = str(triton["shared_memory"]).lower()
    if mode not in ("auto", "system", "none"):
        raise ValueError(f"triton.shared_memory must be auto, system or none, not {mode!r}")
    return mode == "system" or (mode == "auto" and _is_local(str(triton["url"])))


class Inference:
    def __init__(self, config: dict[str, Any]) -> None:
        triton = section(config, "triton")
        batching = triton["batching"]
        self._batching = {
            "max_batch": int(batching["max_batch"]),
            "max_delay": float(batching["max_delay_ms"]) / 1000.0,
            "queue_size": int(batching["queue_size"]),
            "timeout": float(triton["request_timeout"]),
        }
        self.client = TritonClient(
            str(triton["url"]),
            shared_memory=use_shared_memory(triton),
            pool_bytes=int(triton["shm_pool_mb"]) * 1024 * 1024,
            timeout=float(triton["request_timeout"]),
        )
        self._batchers: dict[str, ModelBatcher] = {}

    def batcher(self, model_name: str) -> ModelBatcher:
        batcher = self._batchers.get(model_name)
        if batcher is None:
            batcher = ModelBatcher(self.client, model_name, **self._batching)  # type: ignore[arg-type]
            self._batchers[model_name] = batcher
        return batcher

    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        await self.client.close()
