"""Isolated unit tests: JSON codec, configuration, Accept negotiation, error transport, routes."""

from __future__ import annotations

import grpc
import pytest

from lva.v1 import agent_pb2, streams_pb2
from lva_common.config import load_config, mask_secrets, mask_url
from lva_common.errors import BAD_JSON, HEALTH_CHECK, REGISTRY, LunaError, from_grpc
from lva_core.version import version_parts
from lva_facade.jsoncodec import CodecError, json_to_message, message_to_json
from lva_facade.negotiation import negotiate
from lva_facade.routes import discover_routes, lva_services


def test_json_names_and_enums() -> None:
    version = agent_pb2.GetVersionResponse(version=agent_pb2.VersionInfo(api=1, major=2, minor=3, patch=4))
    assert message_to_json(version) == {"Version": {"api": 1, "major": 2, "minor": 3, "patch": 4}}
    event = streams_pb2.WatchStreamResponse(stream_status=streams_pb2.STREAM_STATUS_IN_PROGRESS)
    rendered = message_to_json(event)
    assert rendered["stream_status"] == "in_progress"
    assert rendered["error"] is None


def test_round_trip_of_a_create_body() -> None:
    body = {
        "name": "cam",
        "data": {
            "reference": "rtsp://h/x",
            "type": "stream",
            "roi": {"x": 1, "y": 2, "width": 3, "height": 4, "mode": "percent"},
        },
        "analytics": [
            {"analytic_name": "people_counter", "parameters": {"probe_count": 3, "targets": ["a"]}}
        ],
        "autorestart": {"restart": 1, "attempt_count": 10, "delay": 1.5},
        "status": "pause",
    }
    message = json_to_message(body, streams_pb2.CreateStreamRequest())
    assert message.status == streams_pb2.STREAM_STATUS_PAUSE
    rendered = message_to_json(message)
    assert rendered["analytics"][0]["parameters"] == {"probe_count": 3, "targets": ["a"]}
    assert rendered["data"]["roi"] == {"x": 1.0, "y": 2.0, "width": 3.0, "height": 4.0, "mode": "percent"}


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"data": {"roi": {"x": "a"}}}, "data.roi.x"),
        ({"analytics": [{}, {"analytic_name": 5}]}, "analytics[1].analytic_name"),
        ({"analytics": {"a": 1}}, "analytics"),
        ({"status": "sleeping"}, "status"),
        ({"autorestart": {"restart": 2**40}}, "autorestart.restart"),
        ({"autorestart": {"restart": True}}, "autorestart.restart"),
        ({"unknown": 1}, "unknown"),
        ({"analytics": [{"parameters": [1]}]}, "analytics[0].parameters"),
        ([], ""),
    ],
)
def test_codec_errors_name_the_path(body: object, path: str) -> None:
    with pytest.raises(CodecError) as caught:
        json_to_message(body, streams_pb2.CreateStreamRequest())
    assert caught.value.path == path


def test_config_layers(tmp_path: pytest.TempPathFactory) -> None:
    config_file = tmp_path / "c.yaml"  # type: ignore[operator]
    config_file.write_text("core:\n  port: 6000\n  log_level: DEBUG\n")
    config = load_config(config_file, environ={"LVA_CORE__PORT": "7000", "LVA_TRITON__MODELS": "{a: b}"})
    assert config["core"]["port"] == 7000  # env beats file
    assert config["core"]["log_level"] == "DEBUG"  # file beats defaults
    models = config["triton"]["models"]
    assert models["a"] == "b" and "people_counter" in models  # mappings merge key by key
    assert config["facade"]["port"] == 5240  # defaults remain


def test_masking() -> None:
    masked = mask_secrets(
        {
            "db_password": "x",
            "apiKey": "y",
            "privateKey": "k",
            "streamUrl": "https://h/hls.m3u8?token=abc&q=1",
            "token": "z",
            "monkey": "m",
            "nested": [{"secret": 1}],
            "url": "rtsp://u:p@cam:554/s",
            "plain_url": "rtsp://cam/s",
            "empty_token": "",
        }
    )
    assert masked == {
        "db_password": "***",
        "apiKey": "***",
        "privateKey": "***",
        "streamUrl": "https://h/hls.m3u8?token=***&q=1",
        "token": "***",
        "monkey": "m",
        "nested": [{"secret": "***"}],
        "url": "rtsp://***@cam:554/s",
        "plain_url": "rtsp://cam/s",
        "empty_token": "",
    }
    assert mask_url("http://user@h/") == "http://***@h/"
    # Signed URLs: the secret travels as auth, sig or signature; the rest stays readable.
    assert mask_url("https://cdn/x.m3u8?auth=a1&user=u&sig=s2&expires=9") == (
        "https://cdn/x.m3u8?auth=***&user=u&sig=***&expires=9"
    )
    assert mask_url("https://b.s3/x?X-Amz-Signature=f00&X-Amz-Credential=c&X-Amz-Date=d") == (
        "https://b.s3/x?X-Amz-Signature=***&X-Amz-Credential=***&X-Amz-Date=d"
    )
    assert (
        mask_url("rtsp://cam/s?sessionid=123&pass=p&channel=1")
        == "rtsp://cam/s?sessionid=***&pass=***&channel=1"
    )


def test_negotiation() -> None:
    produces = ("application/json", "text/plain")
    assert negotiate(None, produces) == "application/json"
    assert negotiate("*/*", produces) == "application/json"
    assert negotiate("text/plain", produces) == "text/plain"
    assert negotiate("text/*;q=0.9, application/json;q=0.5", produces) == "text/plain"
    with pytest.raises(LunaError) as caught:
        negotiate("application/xml", produces)
    assert caught.value.code == 12024


def test_error_transport_round_trip() -> None:
    sent = LunaError(HEALTH_CHECK, "triton down", {"errors": [{"component": "triton"}]})
    received = from_grpc(grpc.StatusCode.UNAVAILABLE, "x", sent.trailing_metadata())
    assert (received.code, received.detail, received.extra) == (38001, "triton down", sent.extra)
    plain = from_grpc(grpc.StatusCode.INVALID_ARGUMENT, "bad", ())
    assert plain.spec is BAD_JSON


def test_registry_is_consistent() -> None:
    assert all(spec.code == code for code, spec in REGISTRY.items())
    assert {1, 12012, 12017, 12024, 12027, 38001, 45001} <= set(REGISTRY)
    assert all(400 <= spec.http_status < 600 for spec in REGISTRY.values())


def test_every_rpc_has_a_route() -> None:
    routes = discover_routes(lva_services())
    bound = {route.method.full_name for route in routes}
    declared = {m.full_name for service in lva_services() for m in service.methods}
    assert bound == declared


def test_version_parts() -> None:
    assert version_parts("1.2.3") == (1, 2, 3)
    assert version_parts("0.4.0.dev1") == (0, 4, 0)
    assert version_parts("2") == (2, 0, 0)
