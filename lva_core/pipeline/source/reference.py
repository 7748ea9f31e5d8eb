"""What a source may open: network URLs of the allowed schemes, or local files in allowed directories."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lva_core.pipeline.source.errors import SourceError

NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def local_path(reference: str) -> Path | None:
    """The local path a reference names, or None for a URL."""
    match = _SCHEME.match(reference)
    if match is None:
        return Path(reference)
    scheme = match.group(1).lower()
    if scheme == "file":
        parts = urlsplit(reference)
        if parts.netloc not in ("", "localhost"):
            return None
        return Path(unquote(parts.path))
    return None


def validate_reference(reference: str, kind: str, allowed_dirs: list[Path] | None) -> None:
    """Refuse at once what the source would fail on: a scheme it does not open, a missing file.

    Allowed: ``rtsp``, ``rtsps``, ``http``, ``https`` URLs with a host, and local files (a path
    or a ``file:`` URL). Every other scheme is refused: FFmpeg's other protocols (``concat:``,
    ``subfile:``, ``pipe:``, ``udp:``, ...) would read files or sockets the caller did not mean.
    With ``allowed_dirs`` a local file must lie, after resolving symbolic links and ``..``,
    inside one of them; a path outside is refused as ``unsupported_scheme`` (a reference the
    agent will not open) before looking whether it exists, so the answer tells nothing about
    files elsewhere. ``kind`` does not restrict the scheme: a file may be read as a stream
    (its end is then a failure) and a URL as a video file.
    """
    del kind  # both kinds take both URLs and files; the parameter is the caller's context
    if not reference or reference != reference.strip() or any(ord(c) < 32 for c in reference):
        raise SourceError("unsupported_scheme", "the reference is empty or has control characters")
    path = local_path(reference)
    if path is None:
        scheme = reference.split(":", 1)[0].lower()
        if scheme not in NETWORK_SCHEMES:
            raise SourceError(
                "unsupported_scheme",
                f"scheme {scheme!r} is not supported (use {', '.join(NETWORK_SCHEMES)} or a file path)",
            )
        if not urlsplit(reference).hostname:
            raise SourceError("unsupported_scheme", f"{scheme} URL without a host")
        return
    resolved = path.resolve()
    if allowed_dirs is not None:
        roots = [Path(root).resolve() for root in allowed_dirs]
        if not any(resolved.is_relative_to(root) for root in roots):
            raise SourceError(
                "unsupported_scheme", f"{path} is outside the directories video files may be read from"
            )
    if not resolved.is_file():
        raise SourceError("not_found", f"no such video file: {path}")


def is_network(reference: str) -> bool:
    """Whether a reference names a network source rather than a local file: the one such test."""
    return local_path(reference) is None
