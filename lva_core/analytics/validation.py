"""Validation of analytic parameters against their JSON schemas (draft 2020-12), defaults filled in.

Every analytic describes its parameters with one JSON schema: ``GET /1/analytics`` shows it,
and ``validate`` enforces it when a stream is created. An error is ``LunaError(BAD_JSON)`` whose
detail starts with the JSON path of the bad field, prefixed by where the parameters sit in the
request (``analytics[0].parameters.probe_count: 0 is less than the minimum of 1``), and whose
``extra`` carries that path as ``{"path": ...}`` for clients that want it machine-readably.

Defaults are filled in from the schema's ``default`` keywords *before* validation, by walking
``properties`` and ``items`` (``fill_defaults``). jsonschema's own recipe (a validator extended
to set defaults while it validates) also fills defaults from branches of ``anyOf``/``oneOf`` that
end up failing; walking the schema first keeps the result predictable, and the filled instance
is then validated as a whole, so a schema whose default is itself invalid is caught too.

The parameter fragments the analytics share (``roi``) live here as well, with their meaning.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from lva_common.errors import invalid


def json_path(prefix: str, parts: Iterable[str | int]) -> str:
    """``prefix`` plus JSON path parts: ``("roi", "width")`` -> ``prefix.roi.width``, ints as ``[i]``."""
    path = prefix
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def fill_defaults(schema: Mapping[str, Any], instance: Any) -> Any:
    """A copy of ``instance`` with every missing property that has a ``default`` in ``schema`` set.

    Only ``properties`` (recursively) and ``items`` are followed: the analytics' schemas keep
    their defaults there, never under ``anyOf``/``oneOf``/``if``. Values of the wrong type are
    left alone for the validator to report.
    """
    if isinstance(instance, Mapping) and isinstance(schema.get("properties"), Mapping):
        filled = dict(instance)
        for key, subschema in schema["properties"].items():
            if key not in filled and "default" in subschema:
                # A deep copy: the schema's default object must never be shared with (and
                # mutated through) one stream's parameters.
                filled[key] = copy.deepcopy(subschema["default"])
            if key in filled:
                filled[key] = fill_defaults(subschema, filled[key])
        return filled
    if isinstance(instance, list) and isinstance(schema.get("items"), Mapping):
        return [fill_defaults(schema["items"], item) for item in instance]
    return copy.deepcopy(instance)


def _error_path(error: ValidationError, prefix: str) -> tuple[str, str]:
    """(path, message) of one jsonschema error, pointing at the offending field itself.

    jsonschema reports ``required`` and ``additionalProperties`` at the enclosing object; a
    client wants the name of the missing or unknown field in the path.
    """
    parts: list[str | int] = list(error.absolute_path)
    instance = error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties" and isinstance(instance, Mapping):
        allowed = set(schema.get("properties", {}))
        unknown = sorted(str(key) for key in instance if key not in allowed)
        if unknown:
            known = ", ".join(sorted(allowed)) or "none"
            return json_path(prefix, [*parts, unknown[0]]), f"unknown parameter (allowed: {known})"
    if error.validator == "required" and isinstance(instance, Mapping):
        required = error.validator_value if isinstance(error.validator_value, list) else []
        missing = [str(key) for key in required if key not in instance]
        if missing:
            return json_path(prefix, [*parts, missing[0]]), "required parameter is missing"
    return json_path(prefix, parts), error.message


def _non_finite(value: Any, parts: tuple[str | int, ...]) -> tuple[str | int, ...] | None:
    """The JSON path parts of the first NaN or infinite number in ``value``, if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return parts
    if isinstance(value, Mapping):
        items: Iterable[tuple[str | int, Any]] = ((str(k), v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, (*parts, key))
        if found is not None:
            return found
    return None


def validate(schema: Mapping[str, Any], parameters: Any, path: str) -> dict[str, Any]:
    """``parameters`` with defaults filled in, or ``LunaError(BAD_JSON)`` naming the bad field.

    ``path`` is where the parameters sit in the request (``analytics[0].parameters``); ``None``
    parameters mean "all defaults".
    """
    bad = _non_finite(parameters, ())
    if bad is not None:
        # A gRPC Struct carries NaN and Infinity; JSON schema's bounds let them through (NaN is
        # never below a minimum), and the stream could then never be rendered as JSON again.
        raise invalid(json_path(path, bad), "must be a finite number")
    instance = fill_defaults(schema, {} if parameters is None else parameters)
    validator = Draft202012Validator(schema)
    # best_match prefers the shallowest, most specific error: one clear message, deterministic.
    error = best_match(validator.iter_errors(instance))
    if error is not None:
        bad_path, message = _error_path(error, path)
        raise invalid(bad_path, message)
    if not isinstance(instance, dict):
        raise invalid(path, "parameters must be a JSON object")
    return instance


def check_schema(schema: Mapping[str, Any]) -> None:
    """Raise if ``schema`` is not a valid draft 2020-12 schema or its defaults do not validate."""
    Draft202012Validator.check_schema(schema)
    error = best_match(Draft202012Validator(schema).iter_errors(fill_defaults(schema, {})))
    if error is not None:
        raise error


# ---------------------------------------------------------------- shared parameter fragments


def roi_schema(what: str) -> dict[str, Any]:
    """The ``roi`` parameter: a rectangle of the source frame; ``what`` says what it selects."""
    number = {"type": "number", "minimum": 0}
    return {
        "type": ["object", "null"],
        "description": (
            f"Region of interest: {what} Coordinates are in pixels of the source frame (after the "
            "stream's rotation, before the stream's own roi crop), or in percent of the source "
            "frame's width and height with mode 'percent'. null (the default): the whole frame."
        ),
        "default": None,
        "properties": {
            "x": {**number, "description": "Left edge."},
            "y": {**number, "description": "Top edge."},
            "width": {"type": "number", "exclusiveMinimum": 0, "description": "Width."},
            "height": {"type": "number", "exclusiveMinimum": 0, "description": "Height."},
            "mode": {
                "enum": ["abs", "percent"],
                "default": "abs",
                "description": "abs: pixels; percent: percent (0-100) of the source frame's size.",
            },
        },
        "required": ["x", "y", "width", "height"],
        "additionalProperties": False,
        # In percent every value is at most 100; that x + width and y + height are too is checked
        # by check_roi (a schema cannot add two fields).
        "if": {"type": "object", "properties": {"mode": {"const": "percent"}}},
        "then": {
            "properties": {
                "x": {"maximum": 100},
                "y": {"maximum": 100},
                "width": {"maximum": 100},
                "height": {"maximum": 100},
            }
        },
    }


def check_roi(roi: Mapping[str, Any] | None, path: str) -> None:
    """The checks of a validated ``roi`` that its schema cannot express; ``path`` is the roi's."""
    if roi is None or roi.get("mode") != "percent":
        return
    if roi["x"] + roi["width"] > 100:
        raise invalid(json_path(path, ["width"]), "x + width exceeds 100 percent of the frame")
    if roi["y"] + roi["height"] > 100:
        raise invalid(json_path(path, ["height"]), "y + height exceeds 100 percent of the frame")
