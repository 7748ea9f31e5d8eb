"""Protobuf messages <-> LUNA-style JSON, driven only by descriptors.

The proto3 JSON mapping (json_format) does not give LUNA's shapes: it camelCases names, renders
int64 as strings and enums as ``STREAM_STATUS_IN_PROGRESS``. The rules here:

- a field's JSON name is its proto name (snake_case), unless the proto sets ``json_name``
  explicitly (``{"Version": ...}``);
- enums render as their value name without the type prefix, lower-cased (``in_progress``); the
  zero (``*_UNSPECIFIED``) value renders as null;
- unset optional scalars and unset message fields render as null; 64-bit ints as numbers;
- Struct/Value/ListValue are plain JSON (integral numbers come back as ints), Timestamp is
  RFC 3339, Duration is seconds, wrappers are their value.

Parsing is strict and reports the dotted path of the first bad field (``data.roi.x``).
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from lva.v1 import options_pb2

_F = FieldDescriptor
_INT_TYPES = {
    _F.TYPE_INT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _F.TYPE_UINT32: (0, 2**32 - 1),
    _F.TYPE_FIXED32: (0, 2**32 - 1),
    _F.TYPE_INT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _F.TYPE_UINT64: (0, 2**64 - 1),
    _F.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOAT_TYPES = {_F.TYPE_FLOAT, _F.TYPE_DOUBLE}
_FLOAT32_MAX = 3.4028234663852886e38
_STRUCT_TYPES = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
# Objects and arrays nested inside one Struct value at most. Protobuf's decoders stop at 100
# message levels, and each JSON object in a Struct costs three (Struct, map entry, Value): about
# 33 objects deep, a body the facade would encode could not be decoded by the core. 20 leaves
# room for the messages around the Struct and is far deeper than any analytic's parameters.
MAX_STRUCT_DEPTH = 20
_WRAPPERS = {
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
}


class CodecError(ValueError):
    """A JSON value that does not fit the message; ``path`` names the field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '<body>'}: {message}")
        self.path = path
        self.message = message


def is_repeated(field: FieldDescriptor) -> bool:
    # protobuf 6 deprecates ``label``; 5.x has no ``is_repeated``.
    flag = getattr(field, "is_repeated", None)
    return bool(flag) if flag is not None else field.label == _F.LABEL_REPEATED


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def json_name(field: FieldDescriptor) -> str:
    """The proto name, or the json_name the proto sets explicitly (protoc always fills in a camelCase one)."""
    declared = str(getattr(field, "json_name", ""))  # present at run time, absent from the stubs
    return declared if declared and declared != _camel(field.name) else str(field.name)


def _enum_prefix(enum: EnumDescriptor) -> str:
    zero = enum.values_by_number.get(0)
    if zero is not None and zero.name.endswith("UNSPECIFIED"):
        return str(zero.name[: -len("UNSPECIFIED")])
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def enum_to_json(enum: EnumDescriptor, number: int) -> str | int | None:
    value = enum.values_by_number.get(number)
    if value is None:
        return number
    if number == 0 and value.name.endswith("UNSPECIFIED"):
        return None
    prefix = _enum_prefix(enum)
    name = str(value.name)
    return (name[len(prefix) :] if name.startswith(prefix) else name).lower()


def enum_choices(enum: EnumDescriptor) -> list[str]:
    return [
        str(enum_to_json(enum, v.number)) for v in enum.values if enum_to_json(enum, v.number) is not None
    ]


def enum_from_json(enum: EnumDescriptor, value: Any, path: str) -> int:
    # Enum names are ASCII; anything else (a lone surrogate makes upb's lookup raise) names none.
    if isinstance(value, str) and value.isascii():
        wanted = value.strip().upper()
        prefix = _enum_prefix(enum)
        for candidate in (prefix + wanted, wanted):
            found = enum.values_by_name.get(candidate)
            if found is not None and found.number != 0:
                return int(found.number)
    raise CodecError(path, f"must be one of {enum_choices(enum)}, not {value!r}")


# ---------------------------------------------------------------- rendering


def _plain_json(value: Any) -> Any:
    """Struct numbers are doubles; give integral ones back as ints so 5241 does not read 5241.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        # -0.0 stays a float: as the int 0 it would come back as +0.0.
        return value if value == 0 and math.copysign(1.0, value) < 0 else int(value)
    if isinstance(value, dict):
        # A Struct is a protobuf map, whose order is the hash table's: the same config or event
        # came out with its keys in a different order from one answer to the next. Sorted, it is
        # stable and diffable.
        return {k: _plain_json(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    return value


def _scalar_to_json(field: FieldDescriptor, value: Any) -> Any:
    if field.type == _F.TYPE_ENUM:
        return enum_to_json(field.enum_type, value)
    if field.type == _F.TYPE_BYTES:
        return base64.b64encode(value).decode()
    if field.type in _FLOAT_TYPES and (math.isnan(value) or math.isinf(value)):
        return None
    if field.type == _F.TYPE_MESSAGE:
        return message_to_json(value)
    return value


def message_to_json(message: Message) -> Any:
    """Render a message (or a well-known type) as LUNA-style JSON."""
    full_name = message.DESCRIPTOR.full_name
    if full_name in _STRUCT_TYPES:
        return _plain_json(json_format.MessageToDict(message))
    if full_name == "google.protobuf.Timestamp":
        return message.ToJsonString()  # type: ignore[attr-defined]
    if full_name == "google.protobuf.Duration":
        return message.ToTimedelta().total_seconds()  # type: ignore[attr-defined]
    if full_name in _WRAPPERS:
        return _scalar_to_json(message.DESCRIPTOR.fields_by_name["value"], message.value)  # type: ignore[attr-defined]
    result: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        name = json_name(field)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            result[name] = {str(k): _scalar_to_json(value_field, v) for k, v in value.items()}
        elif is_repeated(field):
            result[name] = [_scalar_to_json(field, v) for v in value]
        elif field.has_presence and not message.HasField(field.name):
            result[name] = None
        else:
            result[name] = _scalar_to_json(field, value)
    return result


# ---------------------------------------------------------------- parsing


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _utf8(text: str, path: str) -> str:
    """JSON may escape a lone surrogate (``"\\ud800"``); protobuf strings must be valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CodecError(path, "must be valid Unicode text (it has a lone surrogate)") from None
    return text


def declared_bounds(field: FieldDescriptor) -> tuple[int | None, int | None]:
    """The field's ``(lva.v1.bounds)`` option: its minimum and maximum, None where not declared."""
    options = field.GetOptions()
    if not options.HasExtension(options_pb2.bounds):
        return None, None
    bounds = options.Extensions[options_pb2.bounds]
    return (
        bounds.minimum if bounds.HasField("minimum") else None,
        bounds.maximum if bounds.HasField("maximum") else None,
    )


def int_bounds(field: FieldDescriptor) -> tuple[int, int]:
    """The range an integer field accepts: its declared bounds within its wire type's range."""
    low, high = _INT_TYPES[field.type]
    minimum, maximum = declared_bounds(field)
    return max(low, minimum if minimum is not None else low), min(
        high, maximum if maximum is not None else high
    )


# An integer as a query string writes it. int() also takes "1_0", " 7 " and Unicode digits ("٣").
_DECIMAL = re.compile(r"[+-]?[0-9]+")
# A JSON number's shape; float() also takes "nan", "inf" and the same oddities.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _scalar_from_json(field: FieldDescriptor, value: Any, path: str) -> Any:
    kind = field.type
    if kind == _F.TYPE_ENUM:
        return enum_from_json(field.enum_type, value, path)
    if kind in _INT_TYPES:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise CodecError(path, f"must be an integer, not {type(value).__name__}")
        low, high = int_bounds(field)
        if not low <= value <= high:
            raise CodecError(path, f"must be between {low} and {high}")
        return value
    if kind in _FLOAT_TYPES:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise CodecError(path, f"must be a number, not {type(value).__name__}")
        try:
            number = float(value)  # an integer beyond a double's range overflows
        except OverflowError:
            raise CodecError(path, "must be a finite number") from None
        if not math.isfinite(number) or (kind == _F.TYPE_FLOAT and abs(number) > _FLOAT32_MAX):
            raise CodecError(path, "must be a finite number")
        return number
    if kind == _F.TYPE_BOOL:
        if not isinstance(value, bool):
            raise CodecError(path, f"must be a boolean, not {type(value).__name__}")
        return value
    if kind == _F.TYPE_STRING:
        if not isinstance(value, str):
            raise CodecError(path, f"must be a string, not {type(value).__name__}")
        return _utf8(value, path)
    if kind == _F.TYPE_BYTES:
        if not isinstance(value, str):
            raise CodecError(path, "must be a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise CodecError(path, "must be a base64 string") from exc
    raise CodecError(path, f"unsupported field type {kind}")


def _check_struct_value(value: Any, path: str, depth: int = 0) -> None:
    """Refuse, with its path, the first NaN or infinity (``1e400`` parses as inf: a Struct holds
    it, no JSON renders it back) or the first object or array nested past MAX_STRUCT_DEPTH. The
    depth bound also bounds this walk."""
    if isinstance(value, float) and not math.isfinite(value):
        raise CodecError(path, "must be a finite number")
    if isinstance(value, dict):
        items: Any = ((_join(path, str(k)), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return
    if depth >= MAX_STRUCT_DEPTH:
        raise CodecError(path, f"nested too deeply (at most {MAX_STRUCT_DEPTH} levels of objects and arrays)")
    for item_path, item in items:
        _check_struct_value(item, item_path, depth + 1)


def json_to_message(data: Any, message: Message, path: str = "") -> Message:
    """Fill ``message`` from JSON ``data``; raise CodecError naming the bad field's path."""
    descriptor = message.DESCRIPTOR
    full_name = descriptor.full_name
    if full_name in _STRUCT_TYPES or full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        if full_name == "google.protobuf.Struct" and not isinstance(data, dict):
            raise CodecError(path, "must be an object")
        # A Struct holds doubles, infinities included, which no JSON can render back.
        _check_struct_value(data, path)
        if (
            full_name == "google.protobuf.Duration"
            and isinstance(data, int | float)
            and not isinstance(data, bool)
        ):
            data = f"{data}s"
        try:
            json_format.ParseDict(data, message)
        except RecursionError:
            raise CodecError(path, "nested too deeply") from None
        except (json_format.ParseError, TypeError, ValueError, OverflowError) as exc:
            # OverflowError: an integer beyond a double's range in a Struct.
            raise CodecError(path, str(exc)) from exc
        return message
    if full_name in _WRAPPERS:
        message.value = _scalar_from_json(descriptor.fields_by_name["value"], data, path)  # type: ignore[attr-defined]
        return message
    if not isinstance(data, dict):
        raise CodecError(path, f"must be an object, not {type(data).__name__}")
    by_name = {json_name(f): f for f in descriptor.fields}
    for key, value in data.items():
        field = by_name.get(key)
        field_path = _join(path, key)
        if field is None:
            raise CodecError(field_path, "unknown field")
        if value is None:
            continue
        set_field(message, field, value, field_path)
    return message


def set_field(message: Message, field: FieldDescriptor, value: Any, path: str) -> None:
    """Set one field of ``message`` from a JSON value."""
    target = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            raise CodecError(path, "must be an object")
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value.items():
            item_path = f"{path}.{key}"
            if value_field.type == _F.TYPE_MESSAGE:
                json_to_message(item, target[key], item_path)
            else:
                target[key] = _scalar_from_json(value_field, item, item_path)
    elif is_repeated(field):
        if not isinstance(value, list):
            raise CodecError(path, "must be an array")
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            if field.type == _F.TYPE_MESSAGE:
                json_to_message(item, target.add(), item_path)
            else:
                target.append(_scalar_from_json(field, item, item_path))
    elif field.type == _F.TYPE_MESSAGE:
        json_to_message(value, target, path)
        if not target.ListFields() and hasattr(target, "SetInParent"):
            target.SetInParent()  # an explicit {} still marks the field as present
    else:
        setattr(message, field.name, _scalar_from_json(field, value, path))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_query_value(field: FieldDescriptor, text: str, path: str) -> Any:
    """A query-string value as the JSON value its field expects."""
    kind = field.type
    if kind in _INT_TYPES:
        if not _DECIMAL.fullmatch(text) or len(text) > 40:  # 40 digits: beyond every wire type
            raise CodecError(path, f"must be an integer, not {text!r}")
        return int(text)
    if kind in _FLOAT_TYPES:
        if not _NUMBER.fullmatch(text):
            raise CodecError(path, f"must be a number, not {text!r}")
        return float(text)
    if kind == _F.TYPE_BOOL:
        lowered = text.lower()
        if lowered in _TRUE | _FALSE:
            return lowered in _TRUE
        raise CodecError(path, f"must be a boolean, not {text!r}")
    if kind == _F.TYPE_MESSAGE:
        raise CodecError(path, "cannot be given in the query string")
    return text
