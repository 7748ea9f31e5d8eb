"""Accept-header negotiation shared by the generated routes and the docs routes."""

from __future__ import annotations

from collections.abc import Sequence

from lva_common.errors import UNSUPPORTED_MEDIA_TYPE, LunaError


def _ranges(accept: str) -> list[tuple[str, float]]:
    ranges: list[tuple[str, float]] = []
    for index, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        # Stable on ties: earlier ranges win, as clients list their preference first.
        ranges.append((media.lower(), quality - index * 1e-6))
    return ranges


def _matches(media_range: str, media: str) -> bool:
    if media_range in ("*/*", media):
        return True
    kind, _, sub = media_range.partition("/")
    return sub == "*" and media.startswith(kind + "/")


def negotiate(accept: str | None, produces: Sequence[str]) -> str:
    """The best of ``produces`` for ``accept``; no header means the first one."""
    if not accept or not accept.strip():
        return produces[0]
    best: tuple[float, str] | None = None
    for media_range, quality in _ranges(accept):
        if quality <= 0:
            continue
        for media in produces:
            if _matches(media_range, media) and (best is None or quality > best[0]):
                best = (quality, media)
                break
    if best is None:
        raise LunaError(UNSUPPORTED_MEDIA_TYPE, f"Accept {accept!r} is not one of {', '.join(produces)}")
    return best[1]


# The YAML media types, the registered one (RFC 9512) and the older one the seed names for
# /docs/spec. Every route that renders YAML answers to either, with the type that was asked for.
YAML_MEDIA = ("application/x-yaml", "application/yaml")
