"""UUIDs in the one form the agent stores and compares: 8-4-4-4-12 hex digits, lower case.

Python's ``uuid.UUID`` is lenient (braces, ``urn:uuid:``, no hyphens, hyphens anywhere), while the
agent compares ids as strings: an id accepted in one spelling and looked up in another was a 404,
and an account created in upper case was invisible to a lower-case filter. So every id a caller
gives is checked against the canonical shape, case-insensitively (RFC 4122 says so), and
lower-cased before it is compared, stored or used as a key. Other spellings are refused, not
guessed at.
"""

from __future__ import annotations

import re

from lva_common.errors import BAD_QUERY, LunaError

_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def canonical_uuid(value: str) -> str | None:
    """``value`` lower-cased when it is a UUID in the 8-4-4-4-12 form, else None."""
    return value.lower() if _CANONICAL.fullmatch(value) else None


def query_uuid(value: str, name: str) -> str:
    """A UUID that names an object to look up (a path or query value), canonical, or 12012."""
    canonical = canonical_uuid(value)
    if canonical is None:
        raise LunaError(BAD_QUERY, f"{name} {value!r} is not a UUID (8-4-4-4-12 hex digits)", {"path": name})
    return canonical
