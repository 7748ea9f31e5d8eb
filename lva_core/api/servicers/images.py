"""ImagesService: the images events refer to, from the image store, as HTTP bodies."""

from __future__ import annotations

from typing import Any

import grpc
from google.api import httpbody_pb2

from lva.v1 import images_pb2, images_pb2_grpc
from lva_common.errors import OBJECT_NOT_FOUND, LunaError
from lva_common.ids import query_uuid
from lva_core.images.store import ImageStore

Context = grpc.aio.ServicerContext[Any, Any]


class ImagesServicer(images_pb2_grpc.ImagesServiceServicer):
    def __init__(self, store: ImageStore | None) -> None:
        self._store = store  # None: images.path is empty, nothing is kept

    async def GetImage(self, request: images_pb2.GetImageRequest, context: Context) -> httpbody_pb2.HttpBody:
        image_id = query_uuid(request.image_id, "image_id")
        account_id = query_uuid(request.account_id, "account_id") if request.account_id else ""
        found = await self._store.get(image_id, account_id) if self._store is not None else None
        if found is None:
            # One answer for all three cases, as for streams: nothing tells another account's
            # image from one that never existed.
            raise LunaError(
                OBJECT_NOT_FOUND, f"image {image_id} not found (unknown, expired, or of another account)"
            )
        data, mimetype = found
        return httpbody_pb2.HttpBody(content_type=mimetype, data=data)
