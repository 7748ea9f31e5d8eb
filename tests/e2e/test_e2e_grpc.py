"""Every RPC of the core over a real gRPC channel, plus grpc.health.v1 and reflection."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lva.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    analytics_pb2,
    analytics_pb2_grpc,
    streams_pb2,
    streams_pb2_grpc,
)
from lva_common.errors import from_trailers
from lva_testkit.stack import Service

GRPCURL = Path(__import__("sys").executable).parent / "grpcurl"


@pytest.fixture
async def channel(core: Service):  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(core.address) as chan:
        yield chan


async def test_get_version(channel: grpc.aio.Channel) -> None:
    reply = await agent_pb2_grpc.AgentServiceStub(channel).GetVersion(agent_pb2.GetVersionRequest())
    assert (reply.version.api, reply.version.major, reply.version.minor, reply.version.patch) == (1, 0, 3, 1)


async def test_get_config_is_masked(channel: grpc.aio.Channel, secret_token: str) -> None:
    reply = await agent_pb2_grpc.AgentServiceStub(channel).GetConfig(agent_pb2.GetConfigRequest())
    config = json_format.MessageToDict(reply.config)
    assert config["facade"]["auth_token"] == "***"
    assert secret_token not in json.dumps(config)


async def test_list_plugins(channel: grpc.aio.Channel) -> None:
    reply = await agent_pb2_grpc.AgentServiceStub(channel).ListPlugins(agent_pb2.ListPluginsRequest())
    assert {p.name for p in reply.plugins} >= {"probe_sink", "disabled_probe"}


async def test_check_health(channel: grpc.aio.Channel) -> None:
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    for include in (0, 1):
        reply = await stub.CheckHealth(agent_pb2.CheckHealthRequest(include_luna_services=include))
        assert reply.execution_time >= 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CheckHealth(agent_pb2.CheckHealthRequest(include_luna_services=7))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = from_trailers(caught.value.trailing_metadata())
    assert error is not None and error.code == 12012


async def test_streams_and_analytics_rpcs(channel: grpc.aio.Channel) -> None:
    streams = streams_pb2_grpc.StreamsServiceStub(channel)
    listed = await streams.ListStreams(streams_pb2.ListStreamsRequest(page_size=5))
    assert listed.count >= len(listed.streams)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await streams.GetStream(streams_pb2.GetStreamRequest(stream_id="x"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = from_trailers(caught.value.trailing_metadata())
    assert error is not None and error.code == 12012
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await streams.GetStream(
            streams_pb2.GetStreamRequest(stream_id="70c75b04-1ec8-4aa1-930c-ddad9e47b54b")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    catalogue = await analytics_pb2_grpc.AnalyticsServiceStub(channel).ListAnalytics(
        analytics_pb2.ListAnalyticsRequest()
    )
    # The shipped four, and the third-party plugin of tests/fixtures/plugin_site (its disabled
    # twin is not loaded).
    names = {a.name for a in catalogue.analytics}
    assert names == {"people_counter", "human_tracking", "line_crossing", "pipeline_probe", "probe_sink"}


async def test_non_finite_parameters_over_grpc_are_invalid_with_the_path(channel: grpc.aio.Channel) -> None:
    # A gRPC client can put infinities into a Struct directly; the core answers with the path.
    parameters = struct_pb2.Struct()
    parameters.update({"probe_count": 2, "roi": {"x": 0, "y": float("-inf"), "width": 5, "height": 5}})
    request = streams_pb2.CreateStreamRequest(
        data=streams_pb2.StreamData(reference="rtsp://127.0.0.1:1/x"),
        analytics=[streams_pb2.AnalyticConfig(analytic_name="people_counter", parameters=parameters)],
        status=streams_pb2.STREAM_STATUS_PAUSE,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await streams_pb2_grpc.StreamsServiceStub(channel).CreateStream(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = from_trailers(caught.value.trailing_metadata())
    assert error is not None and error.code == 12027
    assert error.extra["path"] == "analytics[0].parameters.roi.y" and "finite" in error.detail


def _nested_parameters(depth: int) -> bytes:
    """A CreateStreamRequest whose parameters nest ``depth`` objects deep, as wire bytes."""
    value: dict[str, object] = {"probe_count": 1}
    for _ in range(depth):
        value = {"a": value}
    request = streams_pb2.CreateStreamRequest(
        data=streams_pb2.StreamData(reference="rtsp://127.0.0.1:1/x"), status=streams_pb2.STREAM_STATUS_PAUSE
    )
    analytic = request.analytics.add(analytic_name="people_counter")
    # Filled in place: copying the Struct in would decode it, and decoding is what fails.
    json_format.ParseDict(value, analytic.parameters)
    return request.SerializeToString()


@pytest.mark.parametrize(
    ("method", "raw"),
    [
        # Valid protobuf that protobuf's own decoder refuses: past its 100-level limit.
        ("/lva.v1.StreamsService/CreateStream", _nested_parameters(40)),
        # A truncated length-delimited field, on a unary and on a server-streaming RPC.
        ("/lva.v1.StreamsService/GetStream", b"\x0a\x05ab"),
        ("/lva.v1.StreamsService/WatchStream", b"\x0a\x05ab"),
    ],
)
async def test_undecodable_requests_get_a_luna_status(
    channel: grpc.aio.Channel, method: str, raw: bytes
) -> None:
    def identity(data: bytes) -> bytes:
        return data

    if method.endswith("WatchStream"):
        call = channel.unary_stream(method, request_serializer=identity, response_deserializer=identity)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call(raw):
                pass
    else:
        unary = channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary(raw)
    # Not grpc's own INTERNAL "Exception deserializing request!": a LUNA 12027.
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    error = from_trailers(caught.value.trailing_metadata())
    assert error is not None and error.code == 12027 and "could not be decoded" in error.detail
    reply = await agent_pb2_grpc.AgentServiceStub(channel).GetVersion(agent_pb2.GetVersionRequest())
    assert reply.version.api == 1


async def test_standard_health_service(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "lva.v1.AgentService", "lva.v1.StreamsService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _grpcurl(*args: str) -> str:
    result = subprocess.run([str(GRPCURL), "-plaintext", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_grpcurl_lists_services_through_reflection(core: Service) -> None:
    listed = set(_grpcurl(core.address, "list").split())
    assert listed >= {
        "lva.v1.AgentService",
        "lva.v1.StreamsService",
        "lva.v1.AnalyticsService",
        "lva.v1.ModelsService",
        "grpc.health.v1.Health",
    }
    methods = _grpcurl(core.address, "list", "lva.v1.StreamsService").split()
    assert "lva.v1.StreamsService.WatchStream" in methods


def test_grpcurl_calls_without_protos(core: Service) -> None:
    reply = json.loads(_grpcurl(core.address, "lva.v1.AgentService/GetVersion"))
    assert reply == {"Version": {"api": 1, "minor": 3, "patch": 1}}  # json_name honoured; zero major omitted
    health = json.loads(
        _grpcurl("-d", '{"include_luna_services": 1}', core.address, "lva.v1.AgentService/CheckHealth")
    )
    assert health["execution_time"] >= 0
