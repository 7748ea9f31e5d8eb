"""AgentServicer through grpcio-testing's in-process server (serialization and method lookup real).

grpcio-testing drives servicers synchronously; the adapter runs each coroutine on a private
event loop. Triton is replaced by a fake health source: these are isolated unit tests; the
real Triton is exercised by the end-to-end tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import grpc_testing
import pytest
from google.protobuf import json_format

from lva.v1 import agent_pb2
from lva_common.config import load_config
from lva_common.errors import LunaError
from lva_core.api.servicers.agent import AgentServicer
from lva_core.runtime.triton_health import ComponentError

SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]


class FakeHealth:
    def __init__(self, errors: list[ComponentError]) -> None:
        self.errors = errors
        self.timeouts: list[float] = []

    async def health(self, timeout: float) -> list[ComponentError]:
        self.timeouts.append(timeout)
        return self.errors


class SyncAdapter:
    """Presents an async servicer's methods as the synchronous callables grpcio-testing calls."""

    def __init__(self, servicer: Any) -> None:
        self._servicer = servicer
        self.raised: list[BaseException] = []

    def __getattr__(self, name: str) -> Callable[[Any, Any], Any]:
        method = getattr(self._servicer, name)

        def call(request: Any, context: Any) -> Any:
            try:
                return asyncio.run(method(request, context))
            except LunaError as exc:
                self.raised.append(exc)
                context.abort(exc.spec.grpc_code, exc.detail)

        return call


@pytest.fixture
def make_server() -> Iterator[Callable[[list[ComponentError]], tuple[Any, SyncAdapter, FakeHealth]]]:
    def make(errors: list[ComponentError]) -> tuple[Any, SyncAdapter, FakeHealth]:
        config = load_config(environ={"LVA_FACADE__AUTH_TOKEN": "tok", "LVA_X__URL": "http://u:p@h/"})
        fake = FakeHealth(errors)
        adapter = SyncAdapter(AgentServicer(config, fake, {}))
        server = grpc_testing.server_from_dictionary({SERVICE: adapter}, grpc_testing.strict_real_time())
        return server, adapter, fake

    yield make


def _invoke(server: Any, name: str, request: Any) -> tuple[Any, grpc.StatusCode, str]:
    rpc = server.invoke_unary_unary(SERVICE.methods_by_name[name], (), request, None)
    response, _, code, details = rpc.termination()
    return response, code, details


def test_get_version(make_server: Any) -> None:
    server, _, _ = make_server([])
    response, code, _ = _invoke(server, "GetVersion", agent_pb2.GetVersionRequest())
    assert code == grpc.StatusCode.OK
    assert (response.version.api, response.version.major, response.version.minor, response.version.patch) == (
        1,
        0,
        3,
        1,
    )


def test_get_config_masks(make_server: Any) -> None:
    server, _, _ = make_server([])
    response, code, _ = _invoke(server, "GetConfig", agent_pb2.GetConfigRequest())
    assert code == grpc.StatusCode.OK
    config = json_format.MessageToDict(response.config)
    assert config["facade"]["auth_token"] == "***"
    assert config["x"]["url"] == "http://***@h/"


def test_list_plugins(make_server: Any) -> None:
    server, _, _ = make_server([])
    response, code, _ = _invoke(server, "ListPlugins", agent_pb2.ListPluginsRequest())
    assert code == grpc.StatusCode.OK
    kinds = {(p.kind, p.name) for p in response.plugins}
    assert {("analytic", "people_counter"), ("sink", "http"), ("sink", "mqtt")} <= kinds
    assert {p.kind for p in response.plugins} == {"analytic", "sink"}


def test_health_ok_skips_triton_unless_asked(make_server: Any) -> None:
    server, _, fake = make_server([])
    response, code, _ = _invoke(server, "CheckHealth", agent_pb2.CheckHealthRequest(include_luna_services=0))
    # Measured, not a default 0 (a check takes microseconds at least; microsecond rounding).
    assert code == grpc.StatusCode.OK and response.execution_time > 0
    assert fake.timeouts == []
    _, code, _ = _invoke(server, "CheckHealth", agent_pb2.CheckHealthRequest(include_luna_services=1))
    assert code == grpc.StatusCode.OK
    assert fake.timeouts == [5.0]


def test_health_reports_failed_components(make_server: Any) -> None:
    server, adapter, _ = make_server([ComponentError("triton", "not ready", "boom")])
    _, code, _ = _invoke(server, "CheckHealth", agent_pb2.CheckHealthRequest(include_luna_services=1))
    assert code == grpc.StatusCode.UNAVAILABLE
    (error,) = adapter.raised
    assert isinstance(error, LunaError) and error.code == 38001
    assert error.extra == {"errors": [{"component": "triton", "status": "not ready", "error": "boom"}]}


def test_health_rejects_bad_flag(make_server: Any) -> None:
    server, adapter, _ = make_server([])
    _, code, _ = _invoke(server, "CheckHealth", agent_pb2.CheckHealthRequest(include_luna_services=3))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert adapter.raised[0].code == 12012  # type: ignore[attr-defined]
