"""Ids parsed from clients: the driver's fast UUID type, interchangeable with uuid.UUID."""

from __future__ import annotations

import uuid

import pytest

from api.core.db import parse_uuid


def test_a_parsed_id_equals_and_hashes_as_the_standard_uuid() -> None:
    standard = uuid.uuid4()
    parsed = parse_uuid(str(standard))
    assert isinstance(parsed, uuid.UUID)
    # The driver's C type (what asyncpg gives for UUID columns), not the pure-Python class.
    assert type(parsed) is not uuid.UUID
    assert type(parsed).__str__ is not uuid.UUID.__str__
    assert parsed == standard and standard == parsed
    assert hash(parsed) == hash(standard)
    assert {standard: "found"}[parsed] == "found"
    assert str(parsed) == str(standard)


@pytest.mark.parametrize(
    "spelling",
    ["{%s}", "urn:uuid:%s", "%s"],
)
def test_every_spelling_the_standard_parser_takes_is_taken(spelling: str) -> None:
    standard = uuid.uuid4()
    assert parse_uuid(spelling % standard) == standard
    assert parse_uuid((spelling % standard).upper().replace("URN:UUID:", "urn:uuid:")) == standard


@pytest.mark.parametrize("text", ["", "nope", "6ba7b810-9dad-11d1-80b4-00c04fd430c", " x"])
def test_what_is_no_uuid_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_uuid(text)
