"""Model routing: which Triton model serves each role of an analytic (``triton.models``).

An analytic asks for a role ("detector"); the configuration names the model for it, and the
inference layer batches that model's items across every stream (a frame's ``Pixels`` become
the format the model declares there: lva_core.inference.frame_format).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lva_common.errors import BAD_JSON, LunaError
from lva_core.analytics.base import Analytic, InferFn
from lva_core.inference.service import Inference
from lva_core.pipeline.pixels import Pixels


class ModelRouter:
    def __init__(self, models: Mapping[str, Any], inference: Inference) -> None:
        self.models = dict(models)
        self.inference = inference

    def infer_for(self, analytic: Analytic) -> InferFn:
        """The ``infer`` callable an analytic gets: its roles mapped to their models' batchers."""
        roles = self.models.get(analytic.name) or {}

        async def infer(
            role: str, inputs: Mapping[str, np.ndarray[Any, Any] | Pixels]
        ) -> dict[str, np.ndarray[Any, Any]]:
            model = roles.get(role)
            if model is None:
                raise LunaError(BAD_JSON, f"no model configured for {analytic.name}.{role} (triton.models)")
            return await self.inference.batcher(str(model)).infer(inputs)

        return infer
