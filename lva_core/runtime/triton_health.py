"""Health of Triton and of the models the agent needs, as a list of failed components.

The health route must answer even when Triton hangs, so every call here is bounded twice: by
gRPC's own deadline (``client_timeout``) and by ``wait_within``, since a channel that is
still connecting does not always honour the former promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import tritonclient.grpc.aio as grpcclient

from lva_common.aio import wait_within

T = TypeVar("T")


@dataclass
class ComponentError:
    """One failed component: ``triton`` or ``model:<name>``."""

    component: str
    status: str
    error: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class _Deadline:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.end = time.monotonic() + timeout

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    async def run(self, call: Awaitable[T]) -> T:
        remaining = self.remaining()
        if remaining <= 0:
            # Close the coroutine so that it is not reported as never awaited.
            if asyncio.iscoroutine(call):
                call.close()
            raise TimeoutError
        return await wait_within(call, remaining)


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    # tritonclient's InferenceServerException carries a gRPC status and a message.
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    return str(text or type(exc).__name__)


async def check_triton(url: str, models: Sequence[str], timeout: float) -> list[ComponentError]:
    """Check that Triton at ``url`` is live and ready and that every model in ``models`` is ready.

    Returns the failed components, ``[]`` when everything is healthy. The whole check takes at
    most about ``timeout`` seconds; it never raises for an unhealthy or unreachable server.
    """
    deadline = _Deadline(timeout)
    errors: list[ComponentError] = []
    client = grpcclient.InferenceServerClient(url)
    try:
        try:
            live = await deadline.run(client.is_server_live(client_timeout=deadline.remaining()))
        except Exception as exc:
            return [ComponentError("triton", "unreachable", f"Triton at {url}: {_describe(exc, timeout)}")]
        if not live:
            return [ComponentError("triton", "not live", f"Triton at {url} is not live")]
        try:
            ready = await deadline.run(client.is_server_ready(client_timeout=deadline.remaining()))
        except Exception as exc:
            return [ComponentError("triton", "unreachable", f"Triton at {url}: {_describe(exc, timeout)}")]
        errors.extend(await _check_models(client, models, deadline))
        if not ready and not errors:
            # Triton is not ready whenever one of its models is not (strict readiness): with a
            # model to blame, blaming the server too would send an operator to the wrong place.
            errors.append(ComponentError("triton", "not ready", f"Triton at {url} is not ready"))
        return errors
    finally:
        with contextlib.suppress(Exception):
            await wait_within(client.close(), 1.0)


async def _check_models(client: Any, models: Sequence[str], deadline: _Deadline) -> list[ComponentError]:
    async def ready(name: str) -> bool | BaseException:
        try:
            return bool(await deadline.run(client.is_model_ready(name, client_timeout=deadline.remaining())))
        except Exception as exc:
            return exc

    names = list(dict.fromkeys(models))
    results = await asyncio.gather(*(ready(name) for name in names))
    failed = [(name, result) for name, result in zip(names, results, strict=True) if result is not True]
    if not failed:
        return []
    # The repository index tells a missing model from one that failed to load, and why it failed.
    index: dict[str, dict[str, str]] | None = None
    with contextlib.suppress(Exception):
        answer = await deadline.run(
            client.get_model_repository_index(as_json=True, client_timeout=deadline.remaining())
        )
        index = {}
        for entry in answer.get("models", []):
            index.setdefault(entry.get("name", ""), entry)
    errors: list[ComponentError] = []
    for name, result in failed:
        component = f"model:{name}"
        if isinstance(result, BaseException):
            errors.append(ComponentError(component, "unknown", _describe(result, deadline.timeout)))
        elif index is not None and name not in index:
            errors.append(ComponentError(component, "not found", f"model {name!r} is not in the repository"))
        else:
            entry = (index or {}).get(name, {})
            state = entry.get("state", "")
            reason = entry.get("reason", "")
            detail = f"model {name!r} is not ready"
            if state:
                detail += f" (state {state}{': ' + reason if reason else ''})"
            errors.append(ComponentError(component, "not ready", detail))
    return errors
