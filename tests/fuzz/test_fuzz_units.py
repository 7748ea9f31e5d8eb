"""Property tests (hypothesis, no server) of input validation and the JSON transcoder.

- jsoncodec: every lva.v1 message survives proto -> JSON text -> proto; any JSON value given
  for any request either fills the message or raises CodecError, and a filled message always
  serialises (nothing invalid reaches protobuf).
- transcoder.parse_json: any bytes are JSON or a 12027, never another exception.
- query and path binding: any text for any bound field is a value or a CodecError.
- analytics: any parameters are accepted with defaults filled in, or a 12027 whose detail and
  path start with where the parameters sit; what is accepted validates again unchanged and
  starts the analytic.
- streams: any StreamData / Autorestart / analytic list is accepted or refused with a 12027
  naming a field under ``data.`` / ``autorestart.`` / ``analytics[i]``.

Bounded and deterministic: ``derandomize`` and ``LVA_FUZZ_EXAMPLES`` (default 25) scaled per test.

Why one file of over 400 lines: the strategies (messages from descriptors, JSON values) are
shared by every property here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lva.v1 import streams_pb2
from lva_common.errors import BAD_JSON, LunaError
from lva_core.analytics.human_tracking import HumanTracking
from lva_core.analytics.people_counter import PeopleCounter
from lva_core.analytics.pipeline_probe import PipelineProbe
from lva_core.analytics.validation import validate
from lva_core.api.convert import source_data_from_proto, source_data_to_proto, stream_spec_from_request
from lva_core.streams.validation import validate_analytics, validate_autorestart, validate_data
from lva_facade.jsoncodec import (
    CodecError,
    int_bounds,
    is_repeated,
    json_to_message,
    message_to_json,
    parse_query_value,
    set_field,
)
from lva_facade.routes import discover_routes, lva_services
from lva_facade.transcoder import parse_json

EXAMPLES = int(os.environ.get("LVA_FUZZ_EXAMPLES", "25"))
_F = FieldDescriptor


def fuzz(scale: int = 4) -> Callable[[Any], Any]:
    return settings(
        max_examples=EXAMPLES * scale,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


ROUTES = discover_routes(lva_services())
REQUEST_TYPES: dict[str, Descriptor] = {r.input_type.full_name: r.input_type for r in ROUTES}


def _all_messages() -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}

    def visit(descriptor: Descriptor) -> None:
        if descriptor.full_name in found or descriptor.GetOptions().map_entry:
            return
        found[descriptor.full_name] = descriptor
        for nested in descriptor.nested_types:
            visit(nested)
        for f in descriptor.fields:
            if f.message_type is not None and f.message_type.full_name.startswith("lva."):
                visit(f.message_type)

    for route in ROUTES:
        visit(route.input_type)
        visit(route.method.output_type)
    return found


MESSAGES = _all_messages()

# ---------------------------------------------------------------- strategies

_finite = st.floats(allow_nan=False, allow_infinity=False)
_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53), _finite, st.text(max_size=12)
)
json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# What json.loads can produce beyond that: lone surrogates, huge integers, non-finite floats.
_hostile_scalars = st.one_of(
    _json_scalars,
    st.text(alphabet=st.characters(codec=None, categories=["Cs", "Cc", "Lu"]), max_size=6),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**320),
    st.floats(),
)
hostile_json = st.recursive(
    _hostile_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _struct_json() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.text(max_size=8), json_values, max_size=4)


_INTEGER_KINDS = {
    _F.TYPE_INT32,
    _F.TYPE_SINT32,
    _F.TYPE_SFIXED32,
    _F.TYPE_UINT32,
    _F.TYPE_FIXED32,
    _F.TYPE_INT64,
    _F.TYPE_SINT64,
    _F.TYPE_SFIXED64,
    _F.TYPE_UINT64,
    _F.TYPE_FIXED64,
}


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == _F.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    integer_kinds = (_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32, _F.TYPE_UINT32, _F.TYPE_FIXED32)
    if kind in (
        *integer_kinds,
        _F.TYPE_INT64,
        _F.TYPE_SINT64,
        _F.TYPE_SFIXED64,
        _F.TYPE_UINT64,
        _F.TYPE_FIXED64,
    ):
        # The wire type's range, narrowed by the field's declared (lva.v1.bounds): what the API accepts.
        low, high = int_bounds(field)
        return st.integers(low, high)
    if kind == _F.TYPE_DOUBLE:
        return _finite
    if kind == _F.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    if kind == _F.TYPE_BOOL:
        return st.booleans()
    if kind == _F.TYPE_BYTES:
        return st.binary(max_size=16)
    return st.text(max_size=16)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Random instances of ``descriptor``'s message, every field possibly set."""
    cls = GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Struct":
        return _struct_json().map(lambda d: json_format.ParseDict(d, struct_pb2.Struct()))
    if descriptor.full_name == "google.protobuf.Timestamp":
        return st.builds(
            lambda s, n: timestamp_pb2.Timestamp(seconds=s, nanos=n),
            st.integers(-62135596800, 253402300799),
            st.integers(0, 999_999_999),
        )

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in descriptor.fields:
            if not draw(st.booleans()):
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_field = field.message_type.fields_by_name["key"]
                value_field = field.message_type.fields_by_name["value"]
                for key in draw(st.lists(_scalar(key_field), max_size=3)):
                    if value_field.message_type is not None:
                        getattr(message, field.name)[key].CopyFrom(
                            draw(messages(value_field.message_type, depth + 1))
                        )
                    else:
                        getattr(message, field.name)[key] = draw(_scalar(value_field))
            elif field.message_type is not None:
                if depth >= 3:
                    continue
                sub = messages(field.message_type, depth + 1)
                if is_repeated(field):
                    getattr(message, field.name).extend(draw(st.lists(sub, max_size=2)))
                else:
                    getattr(message, field.name).CopyFrom(draw(sub))
            elif is_repeated(field):
                getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=3)))
            else:
                value = draw(_scalar(field))
                if field.type == _F.TYPE_ENUM and field.has_presence and value == 0:
                    continue  # an explicit UNSPECIFIED renders as null, i.e. as unset
                setattr(message, field.name, value)
        return message

    return build()


# ---------------------------------------------------------------- the JSON codec


@pytest.mark.parametrize("name", sorted(MESSAGES))
@fuzz(scale=2)
@given(data=st.data())
def test_every_message_round_trips_through_json_text(name: str, data: st.DataObject) -> None:
    descriptor = MESSAGES[name]
    original = data.draw(messages(descriptor))
    text = json.dumps(message_to_json(original), allow_nan=False)  # renders as strict JSON
    parsed = json_to_message(json.loads(text), GetMessageClass(descriptor)())
    assert parsed == original, f"{text}\n{parsed}\n!=\n{original}"


@pytest.mark.parametrize("name", sorted(REQUEST_TYPES))
@fuzz()
@given(data=st.data())
def test_any_json_fills_a_request_or_names_the_bad_field(name: str, data: st.DataObject) -> None:
    descriptor = REQUEST_TYPES[name]
    # Half shaped like the request (its real field names), half anything at all.
    names = [f.name for f in descriptor.fields]
    value = data.draw(
        st.one_of(
            st.dictionaries(st.sampled_from(names), hostile_json, max_size=len(names))
            if names
            else st.just({}),
            hostile_json,
        )
    )
    message = GetMessageClass(descriptor)()
    try:
        json_to_message(value, message)
    except CodecError as exc:
        # The path starts at the offending key of the body ("" when the body itself is wrong).
        if isinstance(value, dict):
            assert any(exc.path == k or exc.path.startswith((f"{k}.", f"{k}[")) for k in value), exc.path
        else:
            assert exc.path == "", exc.path
        return
    message.SerializeToString()  # nothing protobuf refuses got through
    json.dumps(message_to_json(message), allow_nan=False)


@fuzz(scale=2)
@given(data=st.data())
def test_create_request_fields_take_any_json(data: st.DataObject) -> None:
    """Each typed field of a create request, deep inside the body, given any JSON value."""
    paths = [
        ("name",),
        ("data", "reference"),
        ("data", "rotation"),
        ("data", "roi", "x"),
        ("data", "roi", "mode"),
        ("data", "frame_processing", "rate", "period"),
        ("analytics", 0, "analytic_name"),
        ("analytics", 0, "parameters"),
        ("autorestart", "delay"),
        ("autorestart", "attempt_count"),
        ("status",),
    ]
    path = data.draw(st.sampled_from(paths))
    value = data.draw(hostile_json)
    body: Any = value
    for part in reversed(path):
        body = [body] if isinstance(part, int) else {part: body}
    message = streams_pb2.CreateStreamRequest()
    try:
        json_to_message(body, message)
    except CodecError as exc:
        expected = ".".join(p if isinstance(p, str) else f"[{p}]" for p in path).replace(".[", "[")
        assert exc.path.startswith(expected.split(".")[0]), (exc.path, expected)
        return
    message.SerializeToString()


@fuzz(scale=8)
@given(raw=st.one_of(st.binary(max_size=64), json_values.map(lambda v: json.dumps(v).encode())))
@example(raw=b"NaN")
@example(raw=b'{"a": Infinity}')
@example(raw=b"1" * 5000)
@example(raw=b"[" * 100_000 + b"]" * 100_000)
@example(raw=b'"\\ud800"')
@example(raw=b"\xff\xfe{")
def test_parse_json_is_json_or_12027(raw: bytes) -> None:
    try:
        value = parse_json(raw)
    except LunaError as error:
        assert error.spec is BAD_JSON, error
        assert error.detail.startswith("malformed JSON"), error.detail
        return
    json.dumps(value, allow_nan=False)  # whatever is accepted is strict JSON


@pytest.mark.parametrize(
    "label,name",
    sorted(
        (f"{r.http_method} {r.path}", f.name)
        for r in ROUTES
        for f in [*r.query_fields(), *(r.input_type.fields_by_name[p] for p in r.path_fields)]
    ),
)
@fuzz(scale=1)
@given(
    text=st.text(alphabet=st.characters(codec=None), max_size=30)
    | st.sampled_from(["1" * 5000, "1e400", "nan", "-0"])
)
def test_query_and_path_values_bind_or_name_the_parameter(label: str, name: str, text: str) -> None:
    route = next(r for r in ROUTES if f"{r.http_method} {r.path}" == label)
    field = route.input_type.fields_by_name[name]
    message = GetMessageClass(route.input_type)()
    try:
        set_field(message, field, parse_query_value(field, text, name), name)
    except CodecError as exc:
        assert exc.path == name
        return
    message.SerializeToString()


# ---------------------------------------------------------------- analytics parameters

ANALYTICS = {
    "people_counter": PeopleCounter(),
    "human_tracking": HumanTracking(),
    "pipeline_probe": PipelineProbe(),
}
PREFIX = "analytics[3].parameters"


def from_schema(schema: Mapping[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values shaped by a JSON schema's type, bounds, enums and properties (if/then ignored, so
    some are invalid: the validator has to say which)."""
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kinds = schema.get("type", "object")
    options = []
    for kind in kinds if isinstance(kinds, list) else [kinds]:
        if kind == "null":
            options.append(st.none())
        elif kind == "boolean":
            options.append(st.booleans())
        elif kind == "integer":
            options.append(st.integers(schema.get("minimum", -(10**6)), schema.get("maximum", 10**6)))
        elif kind == "number":
            low = schema.get("minimum", schema.get("exclusiveMinimum", -1e9))
            options.append(
                st.floats(
                    low,
                    schema.get("maximum", 1e9),
                    exclude_min="exclusiveMinimum" in schema,
                    allow_nan=False,
                )
            )
            # A gRPC Struct carries these; JSON schema bounds do not stop NaN.
            options.append(st.sampled_from([math.nan, math.inf, -math.inf]))
        elif kind == "string":
            options.append(st.text(max_size=8))
        elif kind == "array":
            options.append(st.lists(from_schema(schema.get("items", {}), depth + 1), max_size=3))
        elif kind == "object" and depth < 4:
            properties = schema.get("properties", {})
            required = set(schema.get("required", []))
            options.append(
                st.fixed_dictionaries(
                    {k: from_schema(v, depth + 1) for k, v in properties.items() if k in required},
                    optional={
                        k: from_schema(v, depth + 1) for k, v in properties.items() if k not in required
                    },
                )
            )
    return st.one_of(options) if options else json_values


def _expect_luna_path(error: LunaError) -> None:
    assert error.spec is BAD_JSON, error
    assert error.detail.startswith(PREFIX), error.detail
    assert str(error.extra["path"]).startswith(PREFIX), error.extra


@pytest.mark.parametrize("name", sorted(ANALYTICS))
@fuzz(scale=8)
@given(data=st.data())
def test_analytic_parameters_are_accepted_and_usable_or_refused_with_a_path(
    name: str, data: st.DataObject
) -> None:
    analytic = ANALYTICS[name]
    schema = analytic.parameters_schema()
    parameters = data.draw(st.one_of(from_schema(schema), hostile_json, st.floats()))
    try:
        accepted = analytic.validate(parameters, PREFIX)
    except LunaError as error:
        _expect_luna_path(error)
        return
    assert isinstance(accepted, dict)
    assert analytic.validate(accepted, PREFIX) == accepted  # defaults filled once and for all
    json.dumps(accepted, allow_nan=False)  # renders back as strict JSON
    analytic.start("stream", accepted)  # anything accepted can run


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", ["people_counter", "human_tracking"])
def test_non_finite_parameters_are_12027(name: str, bad: float) -> None:
    analytic = ANALYTICS[name]
    with pytest.raises(LunaError) as caught:
        analytic.validate({"roi": {"x": bad, "y": 0, "width": 1, "height": 1}}, PREFIX)
    _expect_luna_path(caught.value)
    assert caught.value.extra["path"] == f"{PREFIX}.roi.x"


@fuzz(scale=4)
@given(schema_value=json_values)
def test_validate_never_crashes_on_an_open_schema(schema_value: Any) -> None:
    try:
        validate({"type": "object"}, schema_value, PREFIX)
    except LunaError as error:
        _expect_luna_path(error)


# ---------------------------------------------------------------- stream data

_references = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "rtsp://[::1",
            "http://[zz]/",
            "rtsp://host:99999/x",
            "rtsp://host/x",
            "file:%00",
            "a" * 5000,
            "/tmp/" + "a" * 300,
            "concat:a|b",
            "/definitely/missing.mp4",
        ]
    ),
    st.builds(lambda host, path: f"rtsp://{host}/{path}", st.text(max_size=10), st.text(max_size=10)),
)
_doubles = st.floats()  # NaN and infinities included: a gRPC client can send them


@st.composite
def stream_data(draw: st.DrawFn) -> streams_pb2.StreamData:
    data = streams_pb2.StreamData(
        reference=draw(_references),
        type=draw(st.sampled_from([0, 1, 2])),
        rotation=draw(st.sampled_from([0, 90, 180, 270, -90, 45, 2**31 - 1])),
    )
    if draw(st.booleans()):
        data.roi.CopyFrom(
            streams_pb2.Roi(
                x=draw(_doubles),
                y=draw(_doubles),
                width=draw(_doubles),
                height=draw(_doubles),
                mode=draw(st.sampled_from([0, 1, 2])),
            )
        )
    if draw(st.booleans()):
        data.frame_processing.rate.period = draw(_doubles)
        data.frame_processing.rate.unit = draw(st.sampled_from([0, 1, 2]))
    return data


def _expect_stream_error(error: LunaError, prefix: str) -> None:
    assert error.spec is BAD_JSON, error
    assert str(error.extra["path"]).startswith(prefix), error.extra
    assert error.detail.startswith(str(error.extra["path"])), error.detail


@fuzz(scale=8)
@given(data=stream_data(), allowed=st.sampled_from([None, [Path("/tmp")]]))
def test_stream_data_is_accepted_finite_or_refused_with_a_path(
    data: streams_pb2.StreamData, allowed: list[Path] | None
) -> None:
    try:
        checked = validate_data(source_data_from_proto(data), allowed)
    except LunaError as error:
        _expect_stream_error(error, "data.")
        return
    assert checked.kind in ("stream", "videofile")
    assert checked.rotation in (0, 90, 180, 270)
    if checked.roi is not None:
        for value in (checked.roi.x, checked.roi.y, checked.roi.width, checked.roi.height):
            assert math.isfinite(value) and value >= 0
    if checked.rate is not None:
        assert math.isfinite(checked.rate.period)
    # What was accepted reads back as the client sent it, with the kind filled in.
    back = source_data_to_proto(checked)
    if data.type:
        assert back == data
    else:
        assert back.reference == data.reference and back.type != 0


@fuzz(scale=4)
@given(
    restart=st.sampled_from([0, 1]) | st.integers(-(2**31), 2**31 - 1),
    attempts=st.integers(-1, 20) | st.integers(-(2**31), 2**31 - 1),
    delay=_doubles,
)
def test_autorestart_is_accepted_finite_or_refused_with_a_path(
    restart: int, attempts: int, delay: float
) -> None:
    request = streams_pb2.CreateStreamRequest(
        autorestart=streams_pb2.Autorestart(restart=restart, attempt_count=attempts, delay=delay)
    )
    try:
        checked = validate_autorestart(stream_spec_from_request(request).autorestart)
    except LunaError as error:
        _expect_stream_error(error, "autorestart.")
        return
    assert checked.restart in (0, 1)
    assert checked.attempt_count >= 0
    assert math.isfinite(checked.delay) and checked.delay >= 0


@fuzz(scale=4)
@given(
    configs=st.lists(
        st.tuples(
            st.sampled_from([*ANALYTICS, "", "nope", "people_counter "]),
            st.dictionaries(st.text(max_size=8), json_values, max_size=3) | st.just({}),
        ),
        max_size=3,
    )
)
def test_analytic_lists_are_accepted_or_refused_with_a_path(
    configs: list[tuple[str, dict[str, Any]]],
) -> None:
    protos = [
        streams_pb2.AnalyticConfig(
            analytic_name=name, parameters=json_format.ParseDict(params, struct_pb2.Struct())
        )
        for name, params in configs
    ]
    requested = stream_spec_from_request(streams_pb2.CreateStreamRequest(analytics=protos)).analytics
    try:
        specs = validate_analytics(requested, ANALYTICS)
    except LunaError as error:
        _expect_stream_error(error, "analytics[")
        return
    assert [spec.name for spec in specs] == [name for name, _ in configs]
    assert len({spec.name for spec in specs}) == len(specs)
