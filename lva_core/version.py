"""The service version, from the installed package's metadata."""

from __future__ import annotations

import re
from importlib.metadata import version

API_VERSION = 1
DISTRIBUTION = "luna-video-agent"


def package_version() -> str:
    return version(DISTRIBUTION)


def version_parts(text: str | None = None) -> tuple[int, int, int]:
    """(major, minor, patch) of a PEP 440 version; missing parts are 0."""
    match = re.match(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?", text or package_version())
    if match is None:
        raise ValueError(f"unparsable version {text!r}")
    major, minor, patch = (int(part or 0) for part in match.groups())
    return major, minor, patch
