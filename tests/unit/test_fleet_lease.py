"""Lease arithmetic (lva_core.fleet.lease): when to renew, when to give up."""

from __future__ import annotations

import pytest

from lva_core.fleet.lease import Lease, LeaseTiming


def test_an_agent_gives_up_margin_before_the_lease_it_counts_from_its_send_time() -> None:
    lease = Lease(LeaseTiming(renew_interval=2, ttl=12, margin=2))
    assert not lease.held and not lease.must_fence(1e9)
    lease.renewed(100.0)
    assert lease.fence_at() == 110.0
    assert not lease.must_fence(109.99) and lease.must_fence(110.0)


def test_renewals_come_every_interval_and_never_after_the_fence_time() -> None:
    lease = Lease(LeaseTiming(renew_interval=2, ttl=12, margin=2))
    assert lease.next_renewal(50.0) == 50.0  # none held: at once
    lease.renewed(100.0)
    assert lease.next_renewal(100.5) == 102.0
    tight = Lease(LeaseTiming(renew_interval=0.5, ttl=1.2, margin=0.6))
    tight.renewed(0.0)
    assert tight.next_renewal(0.1) == pytest.approx(0.5)
    lease.drop()
    assert not lease.held and lease.next_renewal(7.0) == 7.0


@pytest.mark.parametrize(
    ("interval", "ttl", "margin"),
    [(0, 12, 2), (10, 12, 2), (11, 12, 2), (1, 3, 3), (1, 12, -1)],
)
def test_timings_that_could_not_renew_in_time_are_refused(interval: float, ttl: float, margin: float) -> None:
    with pytest.raises(ValueError, match="fleet"):
        LeaseTiming(renew_interval=interval, ttl=ttl, margin=margin)
