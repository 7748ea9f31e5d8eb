"""Event images: the pictures events refer to by URL (a crowd's ``overview.image``, a face
track's ``best_shot``).

An analytic puts an :class:`~lva_core.images.request.ImageRequest` (the pixels and the stream's
``image_retain_policy``) where the URL belongs; before the event is published,
:func:`~lva_core.images.request.resolve_images` encodes it off the event loop, keeps it in an
:class:`~lva_core.images.store.ImageStore` until its ttl, and puts the URL in its place. The
facade serves it at ``GET /1/images/{image_id}`` (``ImagesService/GetImage``).
"""
