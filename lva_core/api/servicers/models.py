"""ModelsService: the Triton repository index, and model load/unload for MLOps."""

from __future__ import annotations

import re
from typing import Any

import grpc

from lva.v1 import models_pb2, models_pb2_grpc
from lva_common.errors import BAD_QUERY, MODEL_NOT_FOUND, LunaError
from lva_core.inference.client import TritonClient

Context = grpc.aio.ServicerContext[Any, Any]
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _model(entry: dict[str, Any]) -> models_pb2.Model:
    return models_pb2.Model(
        name=str(entry.get("name", "")),
        version=str(entry.get("version", "")),
        state=str(entry.get("state", "")),
        reason=str(entry.get("reason", "")),
    )


class ModelsServicer(models_pb2_grpc.ModelsServiceServicer):
    def __init__(self, client: TritonClient) -> None:
        self._client = client

    async def _entries(self, name: str) -> list[dict[str, Any]]:
        if not _MODEL_NAME.match(name):
            raise LunaError(BAD_QUERY, f"model name {name!r} must match {_MODEL_NAME.pattern}")
        entries = [e for e in await self._client.repository_index() if e.get("name") == name]
        if not entries:
            raise LunaError(MODEL_NOT_FOUND, f"model {name!r} is not in the Triton repository")
        return entries

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: Context
    ) -> models_pb2.ListModelsResponse:
        entries = await self._client.repository_index()
        if request.ready:
            entries = [e for e in entries if e.get("state") == "READY"]
        return models_pb2.ListModelsResponse(models=[_model(e) for e in entries])

    async def LoadModel(
        self, request: models_pb2.LoadModelRequest, context: Context
    ) -> models_pb2.LoadModelResponse:
        await self._entries(request.model_name)
        # A failed load raises MODEL_ERROR; Triton keeps serving the versions it already had.
        await self._client.load_model(request.model_name)
        entries = await self._entries(request.model_name)
        return models_pb2.LoadModelResponse(models=[_model(e) for e in entries])

    async def UnloadModel(
        self, request: models_pb2.UnloadModelRequest, context: Context
    ) -> models_pb2.UnloadModelResponse:
        await self._entries(request.model_name)
        await self._client.unload_model(request.model_name, request.unload_dependents)
        return models_pb2.UnloadModelResponse()
