"""The 429 of a too-fast CreateStream: its text and its retry_after field show one figure."""

from __future__ import annotations

from typing import Any

import pytest

from lva.v1 import streams_pb2 as S
from lva_common.errors import LunaError
from lva_core.api.ratelimit import RateLimiter
from lva_core.api.servicers.streams import StreamsServicer


async def test_the_text_and_the_field_agree_where_rounding_differs() -> None:
    # 0.01 tokens a second, burst 1: 5.1 ms after the first creation the next token is
    # 99.9949 s away, which reads "99.99" formatted raw but 99.995 ("100.00") rounded to the field.
    times = iter([0.0, 0.0051])
    limiter = RateLimiter(0.01, 1, clock=lambda: next(times))
    account = "6d3c0c1e-3f0a-4b8e-9a51-0c2b8f1d7e42"
    assert limiter.acquire(account) == 0.0
    servicer = StreamsServicer(manager=None, create_limiter=limiter)  # type: ignore[arg-type]
    with pytest.raises(LunaError) as caught:
        await servicer.CreateStream(S.CreateStreamRequest(account_id=account), context=None)  # type: ignore[arg-type]
    error: Any = caught.value
    assert error.spec.code == 47011 and error.extra == {"retry_after": 99.995}
    assert error.detail.endswith(f"retry in {99.995:.2f} s")
