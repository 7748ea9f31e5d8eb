"""AnalyticsService: the catalogue of installed analytics with their schemas and models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import struct_pb2

from lva.v1 import analytics_pb2, analytics_pb2_grpc
from lva_core.analytics.base import Analytic
from lva_core.delivery.callbacks import with_callbacks
from lva_core.delivery.sinks.base import SinkType

Context = grpc.aio.ServicerContext[Any, Any]


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(
        self,
        catalogue: Mapping[str, Analytic],
        models: Mapping[str, Any],
        sinks: Mapping[str, SinkType] | None = None,
    ) -> None:
        # The sink types whose callbacks every analytic takes (the engine's parameter).
        self.sinks = dict(sinks or {})
        self._catalogue = catalogue
        self._models = models

    async def ListAnalytics(
        self, request: analytics_pb2.ListAnalyticsRequest, context: Context
    ) -> analytics_pb2.ListAnalyticsResponse:
        analytics = []
        for name, analytic in sorted(self._catalogue.items()):
            schema = struct_pb2.Struct()
            schema.update(with_callbacks(analytic.parameters_schema(), self.sinks))
            roles = self._models.get(name) or {}
            models = [str(roles[role]) for role in analytic.roles if role in roles]
            analytics.append(
                analytics_pb2.Analytic(
                    name=name,
                    description=analytic.description,
                    parameters_schema=schema,
                    models=models,
                    version=analytic.version,
                )
            )
        return analytics_pb2.ListAnalyticsResponse(analytics=analytics)
