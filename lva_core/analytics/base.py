"""The one small interface every analytic implements. Analytics know nothing about transport.

An analytic is discovered through the ``lva.analytics`` entry-point group. The engine:

1. validates a stream's parameters with ``validate`` at create time (LunaError 12027 naming the
   path of the bad field, e.g. ``analytics[0].parameters.probe_count``);
2. creates per-stream state with ``start``;
3. calls ``process`` for each sampled frame, with an ``infer`` callable that runs a model role
   (batched across streams by the engine) and returns that model's outputs for this frame;
4. calls ``stop`` when the stream ends, to flush final events (a track's "end").

Events are plain JSON-able dicts in the analytic's LUNA shape; the engine wraps them as
``{"analytics_results": {<name>: <event>}}`` on the bus.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import numpy as np

from lva_core.pipeline.frame import Frame
from lva_core.pipeline.pixels import Pixels

# infer(role, inputs) -> outputs, per item (no batch dimension). Roles are the analytic's own
# names for the models it uses ("detector", "attributes"); the config maps roles to models.
# Pass ``frame.pixels`` as ``IMAGE``: the engine ships it in the format the model declares
# (docs/triton.md, "Frame formats"); an array is sent as it is.
InferFn = Callable[
    [str, Mapping[str, np.ndarray[Any, Any] | Pixels]], Awaitable[dict[str, np.ndarray[Any, Any]]]
]
Event = dict[str, Any]


class Analytic(Protocol):
    name: str
    version: str
    description: str
    # Role -> the contract its model must obey ("detector", "face_attributes").
    roles: Mapping[str, str]

    def parameters_schema(self) -> dict[str, Any]:
        """JSON schema (draft 2020-12) of the parameters, with defaults."""
        ...

    def validate(self, parameters: Mapping[str, Any], path: str) -> dict[str, Any]:
        """Parameters with defaults filled in; raise LunaError(BAD_JSON) naming ``path`` + field."""
        ...

    def start(self, stream_id: str, parameters: Mapping[str, Any]) -> Any:
        """Fresh per-stream state."""
        ...

    async def process(self, frame: Frame, state: Any, infer: InferFn) -> list[Event]:
        """Events for this frame (often none).

        The engine keeps two frames of a stream in flight: the next frame's ``process`` starts
        while this one's is still running, and its first ``infer`` call is sent at once but
        returns only after this frame's ``process`` has returned. So state is seen strictly in
        frame order, provided the code *before the first infer call* changes nothing that the
        code after it (of an earlier frame) reads; a rate check that only its own next call
        reads is fine.
        """
        ...

    def stop(self, state: Any) -> list[Event]:
        """Final events when the stream stops (for example, every open track ends)."""
        ...
