"""LUNA's ``callbacks`` parameter, on every analytic: validation, masking, and the sink catalogue.

Callbacks belong to the engine, not to an analytic: every analytic, a plugin's too, takes
``parameters.callbacks`` (at most 10), and the analytic itself never sees them. Each callback
is an object whose ``type`` names a sink type (``lva.sinks`` entry points: ``http``, ``mqtt``);
the type's JSON schema and checks validate it, with errors naming the field
(``analytics[0].parameters.callbacks[1].url: scheme must be http or https, not 'ftp'``).

A host that does not resolve is refused when the stream is created (``check_hosts``): a typo
in a name is a mistake the user should hear about now, not in a dead letter later. A host
that resolves but does not answer is accepted: receivers are allowed to be down.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from lva_common.aio import wait_within
from lva_common.config import MASK, mask_secrets
from lva_common.errors import invalid
from lva_core.analytics.validation import validate
from lva_core.delivery.sinks.base import SinkType

log = logging.getLogger("lva_core.delivery")

GROUP = "lva.sinks"
PARAMETER = "callbacks"
MAX_CALLBACKS = 10
RESOLVE_TIMEOUT = 3.0


def discover_sinks(config: Mapping[str, Any] | None = None) -> dict[str, SinkType]:
    """Every ``lva.sinks`` entry point, instantiated once; ``plugins.disabled`` applies."""
    disabled = set(((config or {}).get("plugins") or {}).get("disabled") or [])
    types: dict[str, SinkType] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in disabled:
            continue
        try:
            sink_type = ep.load()()
        except Exception:  # one broken plugin must not take the agent down
            log.exception("sink plugin %s failed to load", ep.name)
            continue
        types[sink_type.name] = sink_type
    return types


def callbacks_schema(types: Mapping[str, SinkType]) -> dict[str, Any]:
    """The ``callbacks`` parameter as GET /1/analytics shows it (one branch per sink type)."""
    return {
        "type": "array",
        "maxItems": MAX_CALLBACKS,
        "default": [],
        "description": (
            f"Where this analytic's events are delivered besides the WebSocket (at most "
            f"{MAX_CALLBACKS}): each event is kept in the agent's outbox until its receiver "
            "accepted it, retried with capped exponential backoff, in order per stream."
        ),
        "items": {"oneOf": [types[name].schema() for name in sorted(types)]},
    }


def with_callbacks(schema: Mapping[str, Any], types: Mapping[str, SinkType]) -> dict[str, Any]:
    """An analytic's parameters schema with ``callbacks`` added (it is the engine's parameter)."""
    shown = dict(schema)
    shown["properties"] = {**dict(schema.get("properties") or {}), PARAMETER: callbacks_schema(types)}
    return shown


def split_callbacks(parameters: Mapping[str, Any] | None) -> tuple[dict[str, Any], Any]:
    """(the analytic's own parameters, the raw ``callbacks`` value or None)."""
    own = dict(parameters or {})
    return own, own.pop(PARAMETER, None)


def validate_callbacks(value: Any, types: Mapping[str, SinkType], path: str) -> list[dict[str, Any]]:
    """The callbacks with defaults filled in, or LunaError(BAD_JSON) naming the bad field."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise invalid(path, "must be a list of callbacks")
    if len(value) > MAX_CALLBACKS:
        raise invalid(path, f"at most {MAX_CALLBACKS} callbacks, not {len(value)}")
    known = ", ".join(sorted(types)) or "none"
    checked: list[dict[str, Any]] = []
    for index, callback in enumerate(value):
        where = f"{path}[{index}]"
        if not isinstance(callback, Mapping):
            raise invalid(where, "must be an object with a type")
        kind = callback.get("type")
        if kind is None:
            raise invalid(f"{where}.type", f"required parameter is missing (one of: {known})")
        sink_type = types.get(kind) if isinstance(kind, str) else None
        if sink_type is None:
            raise invalid(f"{where}.type", f"unknown callback type {kind!r} (known: {known})")
        filled = validate(sink_type.schema(), callback, where)
        sink_type.check(filled, where)
        checked.append(filled)
    return checked


def callback_path(analytic_index: int, callback_index: int) -> str:
    """A callback's name in statistics and the outbox: where it sits in the stream."""
    return f"analytics[{analytic_index}].parameters.callbacks[{callback_index}]"


async def check_hosts(
    callbacks: Sequence[tuple[str, Mapping[str, Any]]], types: Mapping[str, SinkType]
) -> None:
    """Refuse (LunaError BAD_JSON at ``<path>.url``) a callback whose host does not resolve."""
    loop = asyncio.get_running_loop()
    for path, callback in callbacks:
        for host in types[callback["type"]].hosts(callback):
            try:
                ipaddress.ip_address(host)
                continue  # a literal address: nothing to resolve
            except ValueError:
                pass
            try:
                await wait_within(loop.getaddrinfo(host, None), RESOLVE_TIMEOUT)
            except (OSError, TimeoutError, UnicodeError):
                raise invalid(f"{path}.url", f"host {host!r} does not resolve") from None


def mask_callbacks(callbacks: Any, types: Mapping[str, SinkType] | None = None) -> Any:
    """Callbacks as they may be shown: secrets, credential-like headers and URL credentials masked."""
    if not isinstance(callbacks, list):
        return callbacks
    shown = []
    for callback in callbacks:
        masked = mask_secrets(callback)
        if isinstance(masked, dict):
            sink_type = (types or {}).get(str(masked.get("type")))
            for field in sink_type.secrets if sink_type is not None else ():
                if masked.get(field) not in (None, ""):
                    masked[field] = MASK
        shown.append(masked)
    return shown
