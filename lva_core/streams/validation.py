"""Create-time validation of a stream: every error names the path of the bad field (12027)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from lva_common.errors import invalid
from lva_common.ids import canonical_uuid
from lva_core.analytics.base import Analytic
from lva_core.delivery.callbacks import PARAMETER, split_callbacks, validate_callbacks
from lva_core.delivery.sinks.base import SinkType
from lva_core.pipeline.source.errors import SourceError
from lva_core.pipeline.source.reference import is_network, validate_reference
from lva_core.streams.spec import AnalyticSpec, Autorestart, SourceData

DEFAULT_ATTEMPTS = 10
# Characters. Names and descriptions are labels, not storage: a 1,000,000-character name made one
# list answer 2.3 MB. Generous for people, small for every list and event.
MAX_NAME = 256
MAX_DESCRIPTION = 4096
# LUNA's names of analytics this agent calls otherwise: a stream created with one is stored
# (and shown) under this agent's name.
ANALYTIC_ALIASES = {"people_count": "people_counter"}


def check_text(value: str, path: str, limit: int) -> None:
    if len(value) > limit:
        raise invalid(path, f"is {len(value)} characters long; at most {limit}")


def body_uuid(value: str, path: str) -> str:
    """A UUID from a request body, in its canonical lower-case form (lva_common.ids), or 12027."""
    canonical = canonical_uuid(value)
    if canonical is None:
        raise invalid(path, f"{value!r} is not a UUID (8-4-4-4-12 hex digits)")
    return canonical


def validate_data(data: SourceData, allowed_dirs: list[Path] | None) -> SourceData:
    """``data`` checked, with its kind inferred from the reference when not given."""
    if not data.reference:
        raise invalid("data.reference", "is required")
    try:
        network = is_network(data.reference)
        checked = data if data.kind else replace(data, kind="stream" if network else "videofile")
        if network:
            # Schemes are case-insensitive (RFC 3986) but FFmpeg's protocol names are not: an
            # "RTSP://" camera would be accepted and never open. Stored and shown lower-cased.
            scheme, rest = data.reference.split(":", 1)
            checked = replace(checked, reference=f"{scheme.lower()}:{rest}")
        validate_reference(checked.reference, checked.kind or "stream", allowed_dirs)
        if network:
            _ = urlsplit(checked.reference).port  # 0..65535, or ValueError
    except SourceError as error:
        raise invalid("data.reference", f"{error.kind}: {error}") from None
    except (ValueError, OSError):
        # urlsplit refuses a malformed host or port ("rtsp://[::1"), the file system a NUL byte
        # or a name too long: an unusable reference, not a broken agent. The OS message would
        # name the agent's own directories, so it is not passed on.
        raise invalid("data.reference", "unsupported_scheme: not a usable URL or file name") from None
    if data.rotation not in (0, 90, 180, 270):
        raise invalid("data.rotation", "must be 0, 90, 180 or 270")
    if data.roi is not None:
        roi = data.roi
        for name in ("x", "y", "width", "height"):
            value = getattr(roi, name)
            if not math.isfinite(value):
                raise invalid(f"data.roi.{name}", "must be a finite number")
            if value < 0:
                raise invalid(f"data.roi.{name}", "must not be negative")
        outside = roi.x + roi.width > 100 or roi.y + roi.height > 100
        if roi.percent and outside:
            raise invalid("data.roi", "a percent ROI must lie within 0..100")
    if data.rate is not None:
        rate = data.rate
        if not math.isfinite(rate.period):
            raise invalid("data.frame_processing.rate.period", "must be a finite number")
        if rate.period <= 0:
            raise invalid("data.frame_processing.rate.period", "must be positive")
        if rate.unit != "second" and not float(rate.period).is_integer():
            raise invalid("data.frame_processing.rate.period", "must be a whole number of frames")
    return checked


def validate_analytics(
    requested: list[AnalyticSpec] | tuple[AnalyticSpec, ...],
    catalogue: Mapping[str, Analytic],
    sinks: Mapping[str, SinkType] | None = None,
) -> list[AnalyticSpec]:
    """The analytics with validated parameters; ``callbacks`` (the engine's, on every analytic)
    are validated against ``sinks`` and kept beside the analytic's own parameters."""
    specs: list[AnalyticSpec] = []
    for index, config in enumerate(requested):
        path = f"analytics[{index}]"
        name = ANALYTIC_ALIASES.get(config.name, config.name) if config.name not in catalogue else config.name
        analytic = catalogue.get(name)
        if analytic is None:
            known = ", ".join(sorted(catalogue)) or "none"
            raise invalid(f"{path}.analytic_name", f"unknown analytic {config.name!r} (known: {known})")
        if any(spec.name == name for spec in specs):
            raise invalid(f"{path}.analytic_name", f"{name!r} is listed twice")
        own, callbacks = split_callbacks(config.parameters)
        parameters = analytic.validate(own, f"{path}.parameters")
        if callbacks is not None:
            checked = validate_callbacks(callbacks, sinks or {}, f"{path}.parameters.{PARAMETER}")
            if checked:
                parameters[PARAMETER] = checked
        specs.append(AnalyticSpec(name, parameters))
    return specs


def validate_autorestart(autorestart: Autorestart | None) -> Autorestart:
    """The checked autorestart; not given: restart with the default attempts."""
    if autorestart is None:
        return Autorestart(restart=1, attempt_count=DEFAULT_ATTEMPTS, delay=1.0)
    if autorestart.restart not in (0, 1):
        raise invalid("autorestart.restart", "must be 0 or 1")
    if autorestart.attempt_count < 0:
        raise invalid("autorestart.attempt_count", "must not be negative")
    if not math.isfinite(autorestart.delay):
        raise invalid("autorestart.delay", "must be a finite number")
    if autorestart.delay < 0:
        raise invalid("autorestart.delay", "must not be negative")
    if autorestart.restart and autorestart.attempt_count == 0:
        # proto3 cannot tell an absent count from 0, and "restart, zero times" means nothing:
        # {"restart": 1} alone gets the default count.
        return replace(autorestart, attempt_count=DEFAULT_ATTEMPTS)
    return autorestart
