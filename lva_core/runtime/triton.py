"""Which Triton the core uses: a local one it starts (the default) or an external one by URL."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lva_common.errors import LunaError
from lva_core.runtime.triton_health import ComponentError, check_triton
from lva_core.runtime.triton_server import LocalTriton

log = logging.getLogger("lva_core.triton")


def configured_models(models: dict[str, Any]) -> list[str]:
    """Every model name of the analytic -> role -> model map, once, in order."""
    names: list[str] = []
    for value in models.values():
        for name in value.values() if isinstance(value, dict) else [value]:
            if str(name) not in names:
                names.append(str(name))
    return names


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


class TritonRuntime:
    def __init__(self, config: dict[str, Any]) -> None:
        triton = config["triton"]
        self.url: str = triton["url"]
        self.models: list[str] = configured_models(triton.get("models") or {})
        self.start_error: str | None = None
        self.local: LocalTriton | None = None
        if triton["mode"] == "local":
            self.local = LocalTriton(
                env_dir=Path(triton["env_dir"]),
                model_repository=Path(triton["model_repository"]),
                grpc_port=_port_of(self.url),
                http_port=int(triton["http_port"]),
                metrics_port=int(triton["metrics_port"]),
                model_control_mode=triton["model_control_mode"],
                log_path=Path(triton["log_path"]) if triton.get("log_path") else None,
                startup_timeout=float(triton["startup_timeout"]),
            )
        elif triton["mode"] != "external":
            raise ValueError(f"triton.mode must be local or external, not {triton['mode']!r}")

    async def start(self) -> None:
        """Start the local Triton, if any. A failure is remembered and reported by health, not raised:
        the core keeps serving so that the failure can be seen over the API."""
        if self.local is None:
            return
        try:
            await self.local.start()
            log.info("local Triton ready at %s", self.url)
        except LunaError as exc:
            self.start_error = exc.detail
            log.error("local Triton did not start: %s", exc.detail)

    async def stop(self) -> None:
        if self.local is not None:
            await self.local.stop()

    async def health(self, timeout: float) -> list[ComponentError]:
        errors = await check_triton(self.url, self.models, timeout)
        if errors and self.start_error:
            errors.insert(0, ComponentError("triton", "failed to start", self.start_error))
        return errors
