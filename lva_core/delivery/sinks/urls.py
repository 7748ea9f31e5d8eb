"""The URL checks every sink with a URL shares: parsed, of its schemes, with a host and a port."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from lva_common.errors import invalid


def check_url(url: str, path: str, schemes: tuple[str, ...]) -> SplitResult:
    """The parsed URL, or LunaError(BAD_JSON) at ``path`` saying what is wrong with it."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise invalid(path, f"not a valid URL ({exc})") from None
    if parts.scheme not in schemes:
        raise invalid(path, f"scheme must be {' or '.join(schemes)}, not {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise invalid(path, "has no host")
    if port == 0:
        raise invalid(path, "port 0 is not a port one can reach")
    return parts


def url_hosts(url: str) -> list[str]:
    """The host a URL reaches, for the resolution check at create time."""
    host = urlsplit(url).hostname
    return [host] if host else []
