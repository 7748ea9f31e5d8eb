"""facade.core_address: one core, a fleet's list of IP addresses, or a DNS name for all of them."""

from __future__ import annotations

import json

import pytest

from lva_facade.transcoder import CHANNEL_OPTIONS, CoreClient, channel_target


@pytest.mark.parametrize(
    ("address", "target", "balanced"),
    [
        ("127.0.0.1:5241", "127.0.0.1:5241", False),
        ("core.internal:5241", "core.internal:5241", False),
        ("10.0.0.5:5241, 10.0.0.6:5241", "ipv4:10.0.0.5:5241,10.0.0.6:5241", True),
        ("[::1]:5241,[::2]:5241", "ipv6:[::1]:5241,[::2]:5241", True),
        ("dns:///lva-core.ns.svc:5241", "dns:///lva-core.ns.svc:5241", True),
    ],
)
def test_the_channel_target(address: str, target: str, balanced: bool) -> None:
    assert channel_target(address) == (target, balanced)


@pytest.mark.parametrize("address", ["core-a:5241,core-b:5241", "10.0.0.5:5241,core-b:5241", " , "])
def test_a_list_takes_ip_addresses_only(address: str) -> None:
    with pytest.raises(ValueError, match="core_address"):
        channel_target(address)


def test_a_fleet_is_balanced_round_robin_and_one_core_is_not() -> None:
    def policy(client: CoreClient) -> list[object]:
        return [
            json.loads(v)["loadBalancingConfig"] for k, v in client._options if k == "grpc.service_config"
        ]

    assert policy(CoreClient("10.0.0.5:5241,10.0.0.6:5241", 1.0)) == [[{"round_robin": {}}]]
    single = CoreClient("127.0.0.1:5241", 1.0)
    assert policy(single) == [] and single._options == CHANNEL_OPTIONS
