"""ImagesService: the images events refer to, from the image store, as HTTP bodies.

In a fleet each agent keeps the images of the events it produced (``images.path`` is local
unless it is a shared volume), while the facade sends a request to any core: an agent that
lacks an image asks the other agents (relayed calls, which never relay further) and answers
with the first that has it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.api import httpbody_pb2

from lva.v1 import images_pb2, images_pb2_grpc
from lva_common.errors import OBJECT_NOT_FOUND, LunaError
from lva_common.ids import query_uuid
from lva_core.api.follow import Peers, is_relayed
from lva_core.images.store import ImageStore

Context = grpc.aio.ServicerContext[Any, Any]


class ImagesServicer(images_pb2_grpc.ImagesServiceServicer):
    def __init__(
        self,
        store: ImageStore | None,
        peers: Peers | None = None,
        others: Callable[[], Awaitable[list[str]]] | None = None,
    ) -> None:
        self._store = store  # None: images.path is empty, nothing is kept
        # A fleet's agent: the channels to the others, and their endpoints now.
        self._peers = peers
        self._others = others

    async def GetImage(self, request: images_pb2.GetImageRequest, context: Context) -> httpbody_pb2.HttpBody:
        image_id = query_uuid(request.image_id, "image_id")
        account_id = query_uuid(request.account_id, "account_id") if request.account_id else ""
        found = await self._store.get(image_id, account_id) if self._store is not None else None
        if found is None and self._peers is not None and not is_relayed(context):
            relayed = await self._from_others(
                images_pb2.GetImageRequest(image_id=image_id, account_id=account_id)
            )
            if relayed is not None:
                return relayed
        if found is None:
            # One answer for all three cases, as for streams: nothing tells another account's
            # image from one that never existed.
            raise LunaError(
                OBJECT_NOT_FOUND, f"image {image_id} not found (unknown, expired, or of another account)"
            )
        data, mimetype = found
        return httpbody_pb2.HttpBody(content_type=mimetype, data=data)

    async def _from_others(self, request: images_pb2.GetImageRequest) -> httpbody_pb2.HttpBody | None:
        """The image from the first other agent that has it; all are asked at once."""
        assert self._peers is not None and self._others is not None
        peers = self._peers
        asks = [asyncio.ensure_future(peers.image(endpoint, request)) for endpoint in await self._others()]
        try:
            for answered in asyncio.as_completed(asks):
                body = await answered
                if body is not None:
                    return body
        finally:
            for ask in asks:
                ask.cancel()
        return None
