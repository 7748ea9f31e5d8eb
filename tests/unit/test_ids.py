"""The canonical UUID form (lva_common.ids): one spelling per id, whatever case it came in."""

from __future__ import annotations

import uuid

import pytest

from lva_common.ids import canonical_uuid

ID = "6f1b3c0e-4a5d-4e8f-9b2a-7c6d5e4f3a2b"


@pytest.mark.parametrize("spelling", [ID, ID.upper(), ID[:9] + ID[9:].upper()])
def test_any_case_of_the_8_4_4_4_12_form_is_lower_cased(spelling: str) -> None:
    assert canonical_uuid(spelling) == ID


@pytest.mark.parametrize(
    "spelling",
    [
        "{" + ID + "}",
        "urn:uuid:" + ID,
        ID.replace("-", ""),
        ID[:8] + ID[9:13] + "-" + ID[13:],  # a hyphen moved
        " " + ID,
        ID + "\n",
        ID.replace("a", "g"),
        "",
        "٣" * 8 + ID[8:],  # Arabic-Indic digits are digits to str.isdigit, not hex
    ],
)
def test_other_spellings_are_refused(spelling: str) -> None:
    assert canonical_uuid(spelling) is None


def test_it_agrees_with_the_uuid_module_on_what_it_accepts() -> None:
    for _ in range(100):
        value = uuid.uuid4()
        assert canonical_uuid(str(value).upper()) == str(value)
