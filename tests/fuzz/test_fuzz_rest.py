"""Fuzzing the whole REST API from its own OpenAPI document (``GET /docs/spec``) with schemathesis.

Every operation the document lists gets schema-valid and schema-violating requests (the coverage
and fuzzing phases, positive and negative modes) against the real facade, core and Triton of the
test session (a core and facade of the module's own, on the session's Triton, without the
creation rate limit). Every answer must be: not a 5xx; conforming to the document (status, content type,
body schema, headers); a LUNA error body with the status its code is registered with whenever it
is an error; and stamped with ``Luna-Request-Id`` (the one sent, when a valid one was sent).

Bounded for CI: a fixed seed, deterministic generation and ``LVA_FUZZ_EXAMPLES`` examples per
operation in the fuzzing phase (default 25). Run longer with e.g. ``LVA_FUZZ_EXAMPLES=500``.

Side effects on the shared session are neutralised: model load/unload only ever names models
that do not exist (the fuzzed name gets a prefix), and every stream the fuzzer manages to create
is deleted at once and checked gone at the end.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup, as_reported_failure
from schemathesis.core.transport import Response
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.pytest._test_builder import build_operation_test
from schemathesis.python._constants.orchestrator import make_constants_value_source
from schemathesis.specs.openapi.schemas import OpenApiSchema

from lva_common.errors import REGISTRY
from lva_facade.openapi import build_openapi
from lva_facade.request_id import PATTERN
from lva_facade.routes import discover_routes, lva_services
from lva_testkit.stack import Service, start_core, start_facade

MAX_EXAMPLES = int(os.environ.get("LVA_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("LVA_FUZZ_SEED", "20240611"))
MODEL_PREFIX = "zz-fuzz-absent-"
VALID_REQUEST_ID = "1536751345,8b8b5937-2e9c-4e8b-a7a7-5caf86621b5a"
LUNA_KEYS = {"error_code": int, "desc": str, "detail": str, "link": str}
# The streams the fuzzer created (and deleted); checked gone at the end of the module.
CREATED: list[str] = []


def _config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "checks": {
                # The document types fields but cannot say that a stream_id must be a UUID of an
                # existing stream, that paging is not negative or that PATCH takes only pause and
                # pending: schema-valid requests are refused for such reasons by design. Every
                # other check (negative data rejected, status codes, content types, schemas,
                # headers, undeclared methods) stays on.
                "positive_data_acceptance": {"enabled": False},
            },
            "request-timeout": 30,
        }
    )


@pytest.fixture(scope="module")
def core(log_dir: Path, triton: Service) -> Iterator[Service]:
    """A core of this module's own, without the per-account creation limit.

    Every create request takes a token of streams.create_rate, refused or not: on the session's
    core the fuzzers drained the bucket within a hundred requests, and every later example was a
    429 that tested nothing (and left the next modules waiting for the bucket to refill).
    """
    service = start_core(log_dir, triton.address, {"LVA_STREAMS__CREATE_RATE__PER_SECOND": "0"})
    yield service
    service.stop()


@pytest.fixture(scope="module")
def facade(log_dir: Path, core: Service) -> Iterator[Service]:
    """A facade on this module's core (``base_url`` follows it)."""
    service = start_facade(log_dir, core.address)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def fuzz_schema(facade: Service) -> Iterator[OpenApiSchema]:
    base = f"http://{facade.address}"
    schema = schemathesis.openapi.from_url(
        f"{base}/docs/spec", headers={"Accept": "application/x-yaml"}, config=_config()
    )
    yield schema
    for stream_id in CREATED:
        answer = requests.get(f"{base}/1/streams/{stream_id}", timeout=30)
        assert answer.status_code == 404, f"fuzzed stream {stream_id} still exists: {answer.text}"


def _labels() -> list[str]:
    """The operations of the document the facade serves, built the same way without a server."""
    spec = build_openapi(discover_routes(lva_services()), "Luna Video Agent", "0")
    return [f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method in ops]


def _header(response: Response, name: str) -> str | None:
    values = response.headers.get(name.lower())
    return values[0] if values else None


def luna_answers(ctx: Any, response: Response, case: Case) -> bool | None:
    """Every answer carries the request id; every error is a LUNA body with its registered status."""
    request_id = _header(response, "Luna-Request-Id")
    assert request_id is not None, "no Luna-Request-Id header"
    assert PATTERN.match(request_id), f"malformed Luna-Request-Id {request_id!r}"
    sent = response.request.headers.get("Luna-Request-Id")
    if sent is not None and PATTERN.match(sent):
        assert request_id == sent, f"sent Luna-Request-Id {sent!r}, got {request_id!r}"
    if response.status_code < 400:
        return None
    content_type = _header(response, "Content-Type") or ""
    assert content_type.startswith("application/json"), f"error answer of type {content_type!r}"
    body = json.loads(response.content)
    assert isinstance(body, dict), f"error body {body!r} is not an object"
    for key, kind in LUNA_KEYS.items():
        assert isinstance(body.get(key), kind), f"error body {body!r}: {key} is not a {kind.__name__}"
    spec = REGISTRY.get(body["error_code"])
    assert spec is not None, f"error code {body['error_code']} is not in the registry"
    assert spec.http_status == response.status_code, (
        f"error {spec.code} is registered as HTTP {spec.http_status}, answered {response.status_code}"
    )
    assert body["desc"] == spec.desc
    assert re.search(r"/docs/dev/errors\.html#", body["link"]), body["link"]
    return True


def _neutralise(case: Case) -> None:
    """Model control only on names that cannot exist, so the shared Triton keeps its models."""
    if case.path_parameters and "model_name" in case.path_parameters:
        name = case.path_parameters["model_name"]
        case.path_parameters["model_name"] = f"{MODEL_PREFIX}{name}"


def _repair_request_id(case: Case) -> None:
    """Schemathesis' coverage phase cannot satisfy the Luna-Request-Id pattern (it sends ``0`` as
    the "valid" value of any pattern with a literal between repeats): give such cases a valid id,
    unless the header itself is what the case is about. The fuzzing phase generates real ones."""
    meta = case.meta
    if meta is None or meta.phase.name != "coverage" or not case.headers:
        return
    sent = case.headers.get("Luna-Request-Id")
    about = str(getattr(meta.phase.data, "parameter", "") or "")
    if sent is not None and not PATTERN.match(str(sent)) and about != "Luna-Request-Id":
        case.headers["Luna-Request-Id"] = VALID_REQUEST_ID


def test_served_document_lists_every_operation(fuzz_schema: OpenApiSchema) -> None:
    served = sorted(
        f"{method.upper()} {path}" for path, ops in fuzz_schema.raw_schema["paths"].items() for method in ops
    )
    assert served == sorted(_labels())


def _exercise(case: Case, base_url: str) -> None:
    _neutralise(case)
    _repair_request_id(case)
    response = case.call(base_url=base_url, timeout=30)
    try:
        case.validate_response(response, additional_checks=[luna_answers])
    finally:
        if case.method.upper() == "POST" and case.path == "/1/streams" and response.status_code == 201:
            stream_id = response.json()["stream_id"]
            CREATED.append(stream_id)
            deleted = requests.delete(f"{base_url}/1/streams/{stream_id}", timeout=30)
            assert deleted.status_code == 204, deleted.text


@pytest.mark.parametrize("label", _labels())
def test_rest_api_fuzz(label: str, fuzz_schema: OpenApiSchema, base_url: str) -> None:
    """Every phase and mode the config enables, as schemathesis' own pytest integration runs them.

    Its lazy-fixture loader (``schemathesis.pytest.from_fixture``) relies on pytest's
    ``Function._nodeid``, gone in pytest 9.2, so the per-operation test is built the way that
    loader builds it.
    """
    operation = fuzz_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served document"
    feedback = FeedbackSources(constants_value_source=make_constants_value_source(fuzz_schema))
    test = build_operation_test(
        config=fuzz_schema.config,
        operation=operation,
        test_func=_exercise,
        given_kwargs={},
        feedback=feedback,
    )
    try:
        test(base_url=base_url)
    except FailureGroup as exc:
        raise as_reported_failure(exc) from None


# ---------------------------------------------------------------- raw bodies
# schemathesis sends JSON it serialised itself: never a lone surrogate escape, a NaN literal, an
# integer of thousands of digits or nesting deeper than the parser's recursion limit. These reach
# every typed field of a create request through a template.

_NASTY = [
    "NaN",
    "Infinity",
    "-Infinity",
    '"\\ud800"',
    '"a\\udfffb"',
    '"\\u0000"',
    "1" * 5000,
    "-" + "9" * 400,
    "1e400",
    "-1e400",
    "1e-400",
    "4294967296",
    "-2147483649",
    "18446744073709551616",
    "1.5",
    "true",
    "null",
    "{}",
    "[]",
    '""',
    "[" * 3000 + "]" * 3000,
    '{"a":' * 1500 + "1" + "}" * 1500,
    # References the URL parser or the file system refuse with an exception of their own.
    '"rtsp://[::1"',
    '"http://[zz]/"',
    '"rtsp://host:99999/x"',
    '"file:%00"',
    '"/tmp/' + "a" * 300 + '"',
]
_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
).map(json.dumps)
_value = st.recursive(
    st.one_of(_json_leaf, st.sampled_from(_NASTY)),
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda items: "[" + ",".join(items) + "]"),
        st.dictionaries(st.text(max_size=8), children, max_size=3).map(
            lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=6,
)
_TEMPLATE = (
    '{{"name":{0},"account_id":{1},"data":{{"reference":{2},"rotation":{3},'
    '"roi":{{"x":{4},"width":{5},"mode":{6}}},"frame_processing":{{"rate":{{"period":{7},"unit":{8}}}}}}},'
    '"analytics":[{{"analytic_name":{9},"parameters":{{"roi":{10},"rate":{11}}}}}],'
    '"autorestart":{{"restart":{12},"attempt_count":{13},"delay":{14}}},"status":{15}}}'
)
_templated = st.lists(_value, min_size=16, max_size=16).map(lambda values: _TEMPLATE.format(*values))
_bodies = st.one_of(
    _templated.map(lambda text: text.encode("utf-8", "surrogatepass")),
    _value.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=64),
)


@given(body=_bodies)
@settings(
    max_examples=MAX_EXAMPLES * 4,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_raw_json_bodies_are_luna_errors(facade: Service, body: bytes) -> None:
    """Any body to a JSON route: a 12027 (413 when too large), never a 5xx."""
    base = f"http://{facade.address}"
    answer = requests.post(
        f"{base}/1/streams", data=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    if answer.status_code == 201:
        stream_id = answer.json()["stream_id"]
        CREATED.append(stream_id)
        requests.delete(f"{base}/1/streams/{stream_id}", timeout=30)
    # No 429: this module's core has no creation limit, so every body is judged on its content.
    expected = {400: 12027, 413: 47009}
    assert answer.status_code in expected, f"{answer.status_code} for {body[:200]!r}: {answer.text[:300]}"
    error = answer.json()
    assert set(LUNA_KEYS) <= set(error), error
    assert error["error_code"] == expected[answer.status_code], error
    assert answer.headers.get("Luna-Request-Id"), answer.headers


def test_facade_healthy_after_fuzzing(base_url: str) -> None:
    answer = requests.get(f"{base_url}/healthcheck", timeout=30)
    assert answer.status_code == 200, answer.text
    assert isinstance(answer.json()["execution_time"], float)
