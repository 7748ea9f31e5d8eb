"""Create-time validation of a stream: every error names the path of the bad field (12027)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import json_format

from lva.v1 import streams_pb2
from lva_common.errors import BAD_JSON, LunaError
from lva_core.analytics.base import Analytic
from lva_core.pipeline.source.errors import SourceError
from lva_core.pipeline.source.reference import validate_reference
from lva_core.streams.record import AnalyticSpec

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
DEFAULT_ATTEMPTS = 10


def invalid(path: str, message: str) -> LunaError:
    return LunaError(BAD_JSON, f"{path}: {message}", {"path": path})


def check_uuid(value: str, path: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise invalid(path, f"{value!r} is not a UUID") from None


def validate_data(data: streams_pb2.StreamData, allowed_dirs: list[Path] | None) -> streams_pb2.StreamData:
    checked = streams_pb2.StreamData()
    checked.CopyFrom(data)
    if not data.reference:
        raise invalid("data.reference", "is required")
    if checked.type == streams_pb2.SOURCE_TYPE_UNSPECIFIED:
        network = data.reference.lower().startswith(NETWORK_SCHEMES)
        checked.type = streams_pb2.SOURCE_TYPE_STREAM if network else streams_pb2.SOURCE_TYPE_VIDEOFILE
    kind = "videofile" if checked.type == streams_pb2.SOURCE_TYPE_VIDEOFILE else "stream"
    try:
        validate_reference(data.reference, kind, allowed_dirs)
        if data.reference.lower().startswith(NETWORK_SCHEMES):
            _ = urlsplit(data.reference).port  # 0..65535, or ValueError
    except SourceError as error:
        raise invalid("data.reference", f"{error.kind}: {error}") from None
    except (ValueError, OSError):
        # urlsplit refuses a malformed host or port ("rtsp://[::1"), the file system a NUL byte
        # or a name too long: an unusable reference, not a broken agent. The OS message would
        # name the agent's own directories, so it is not passed on.
        raise invalid("data.reference", "unsupported_scheme: not a usable URL or file name") from None
    if data.rotation not in (0, 90, 180, 270):
        raise invalid("data.rotation", "must be 0, 90, 180 or 270")
    if data.HasField("roi"):
        roi = data.roi
        for name in ("x", "y", "width", "height"):
            value = getattr(roi, name)
            if not math.isfinite(value):
                raise invalid(f"data.roi.{name}", "must be a finite number")
            if value < 0:
                raise invalid(f"data.roi.{name}", "must not be negative")
        outside = roi.x + roi.width > 100 or roi.y + roi.height > 100
        if roi.mode == streams_pb2.ROI_MODE_PERCENT and outside:
            raise invalid("data.roi", "a percent ROI must lie within 0..100")
    rate = data.frame_processing.rate
    if data.frame_processing.HasField("rate"):
        if not math.isfinite(rate.period):
            raise invalid("data.frame_processing.rate.period", "must be a finite number")
        if rate.period <= 0:
            raise invalid("data.frame_processing.rate.period", "must be positive")
        if rate.unit != streams_pb2.RATE_UNIT_SECOND and not float(rate.period).is_integer():
            raise invalid("data.frame_processing.rate.period", "must be a whole number of frames")
    return checked


def validate_analytics(
    configs: list[streams_pb2.AnalyticConfig], catalogue: Mapping[str, Analytic]
) -> list[AnalyticSpec]:
    specs: list[AnalyticSpec] = []
    for index, config in enumerate(configs):
        path = f"analytics[{index}]"
        analytic = catalogue.get(config.analytic_name)
        if analytic is None:
            known = ", ".join(sorted(catalogue)) or "none"
            message = f"unknown analytic {config.analytic_name!r} (known: {known})"
            raise invalid(f"{path}.analytic_name", message)
        if any(spec.name == config.analytic_name for spec in specs):
            raise invalid(f"{path}.analytic_name", f"{config.analytic_name!r} is listed twice")
        parameters: dict[str, Any] = integral(json_format.MessageToDict(config.parameters))
        specs.append(AnalyticSpec(config.analytic_name, analytic.validate(parameters, f"{path}.parameters")))
    return specs


def integral(value: Any) -> Any:
    """``value`` with every whole float that a double holds exactly turned into an int.

    A protobuf Struct keeps every number as a double, so the ``3`` a client sent arrives as
    ``3.0``: validation messages would quote ``300.0 is greater than the maximum of 100`` and the
    analytics would get floats for their integer parameters. Struct cannot tell 3 from 3.0; the
    integer is what JSON clients send. Beyond 2**53 a double is not an exact integer: it stays a
    float.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [integral(item) for item in value]
    return value


def validate_autorestart(request: streams_pb2.CreateStreamRequest) -> streams_pb2.Autorestart:
    if not request.HasField("autorestart"):
        return streams_pb2.Autorestart(restart=1, attempt_count=DEFAULT_ATTEMPTS, delay=1.0)
    autorestart = request.autorestart
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
        filled = streams_pb2.Autorestart()
        filled.CopyFrom(autorestart)
        filled.attempt_count = DEFAULT_ATTEMPTS
        return filled
    return autorestart
