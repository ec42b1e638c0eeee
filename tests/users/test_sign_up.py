"""signUp: name and password rules, case- and width-insensitive uniqueness, the first session."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from api.core.db import Database
from api.core.settings import Settings
from tests.support import PASSWORD, SIGN_UP, GraphQLClient, unique_name
from tests.users.helpers import error_code, exchange, session_rows, set_cookies, user_row

SIGN_IN = """
mutation SignIn($name: String!, $password: String!) {
  signIn(name: $name, password: $password) { user { id name } }
}
"""
ME = "query { me { id name createdAt } }"


def fullwidth(text: str) -> str:
    """The fullwidth form of ASCII text ("alice" -> U+FF41 U+FF4C ...); NFKC maps it back."""
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in text)


def short_unique(length: int) -> str:
    """A fresh name of exactly `length` characters."""
    return ("n" + uuid.uuid4().hex)[:length]


async def test_sign_up_creates_the_account_and_signs_in(client: GraphQLClient) -> None:
    name = unique_name()
    before = datetime.now(UTC)
    data = await client.data(SIGN_UP, {"name": name, "password": PASSWORD})
    payload = data["signUp"]
    assert payload["user"]["name"] == name
    created_at = datetime.fromisoformat(payload["user"]["createdAt"])
    assert created_at.tzinfo is not None
    assert before - timedelta(seconds=5) <= created_at <= datetime.now(UTC) + timedelta(seconds=5)
    # The same browser is now signed in as the new user.
    me = (await client.data(ME))["me"]
    assert me == payload["user"]


async def test_sign_up_expires_at_is_the_session_ttl_from_now(
    client: GraphQLClient, settings: Settings
) -> None:
    before = datetime.now(UTC)
    data = await client.data(SIGN_UP, {"name": unique_name(), "password": PASSWORD})
    expires_at = datetime.fromisoformat(data["signUp"]["expiresAt"])
    assert before + settings.session_ttl - timedelta(seconds=1) <= expires_at
    assert expires_at <= datetime.now(UTC) + settings.session_ttl


async def test_sign_up_creates_a_session_row_with_the_user_agent(
    client: GraphQLClient, db: Database
) -> None:
    name = unique_name()
    await client.data(
        SIGN_UP, {"name": name, "password": PASSWORD}, headers={"User-Agent": "sign-up-test/1.0"}
    )
    user = await user_row(db, name)
    rows = await session_rows(db, user.id)
    assert len(rows) == 1
    assert rows[0].user_agent == "sign-up-test/1.0"
    assert rows[0].revoked_at is None


@pytest.mark.parametrize(
    "make_name",
    [
        pytest.param(lambda: short_unique(3), id="3-characters"),
        pytest.param(lambda: short_unique(32), id="32-characters"),
        pytest.param(lambda: f"a.b-c_{uuid.uuid4().hex[:8]}", id="dot-dash-underscore"),
        pytest.param(lambda: f"Zoë_Łukasz_{uuid.uuid4().hex[:8]}", id="non-ascii-letters"),
        pytest.param(lambda: f"{uuid.uuid4().int % 10**12:012d}", id="digits-only"),
    ],
)
async def test_sign_up_accepts_names_of_letters_digits_underscore_dot_and_dash(
    client: GraphQLClient, make_name: Callable[[], str]
) -> None:
    name = make_name()
    data = await client.data(SIGN_UP, {"name": name, "password": PASSWORD})
    assert data["signUp"]["user"]["name"] == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("ab", id="2-characters"),
        pytest.param("a" * 33, id="33-characters"),
        pytest.param("\uff41\uff42", id="2-fullwidth-characters"),
    ],
)
async def test_sign_up_with_a_name_of_the_wrong_length_is_bad_user_input(
    client: GraphQLClient, name: str
) -> None:
    response, body = await exchange(client.http, SIGN_UP, {"name": name, "password": PASSWORD})
    assert error_code(body) == "BAD_USER_INPUT"
    assert "3 to 32 characters" in body["errors"][0]["message"]
    assert set_cookies(response) == []


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("has space", id="space"),
        pytest.param("at@sign", id="at-sign"),
        pytest.param("slash/name", id="slash"),
        pytest.param("<script>", id="angle-brackets"),
        pytest.param("emoji😀x", id="emoji"),
        pytest.param("tab\tname", id="tab"),
        pytest.param("nul\u0000name", id="nul"),
        pytest.param("lone\ud800surrogate", id="lone-surrogate"),
        pytest.param("zero\u200bwidth", id="zero-width-space"),
        pytest.param("quote'name", id="quote"),
    ],
)
async def test_sign_up_with_a_name_of_forbidden_characters_is_bad_user_input(
    client: GraphQLClient, name: str
) -> None:
    response, body = await exchange(client.http, SIGN_UP, {"name": name, "password": PASSWORD})
    assert error_code(body) == "BAD_USER_INPUT"
    assert "letters, digits" in body["errors"][0]["message"]
    assert set_cookies(response) == []


async def test_sign_up_stores_the_nfkc_form_of_a_fullwidth_name(client: GraphQLClient) -> None:
    name = unique_name("w")
    data = await client.data(SIGN_UP, {"name": fullwidth(name), "password": PASSWORD})
    assert data["signUp"]["user"]["name"] == name


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(str.upper, id="upper-case"),
        pytest.param(str.title, id="title-case"),
        pytest.param(fullwidth, id="fullwidth"),
        pytest.param(lambda name: fullwidth(name.upper()), id="fullwidth-upper-case"),
    ],
)
async def test_sign_up_with_a_name_taken_in_another_case_or_width_is_conflict(
    make_client: Callable[[], GraphQLClient], variant: Callable[[str], str]
) -> None:
    name = unique_name("alice")
    await make_client().sign_up(name)
    response, body = await exchange(
        make_client().http, SIGN_UP, {"name": variant(name), "password": PASSWORD}
    )
    assert error_code(body) == "CONFLICT"
    assert set_cookies(response) == []


async def test_sign_up_uniqueness_uses_casefolding_not_just_lower_case(
    make_client: Callable[[], GraphQLClient],
) -> None:
    suffix = uuid.uuid4().hex[:8]
    # "ß".lower() is "ß" but "ß".casefold() is "ss": only casefolding makes these one name.
    await make_client().sign_up(f"Straße_{suffix}")
    _, body = await exchange(
        make_client().http, SIGN_UP, {"name": f"STRASSE_{suffix}", "password": PASSWORD}
    )
    assert error_code(body) == "CONFLICT"


async def test_sign_up_with_the_same_name_at_once_admits_exactly_one(
    make_client: Callable[[], GraphQLClient],
) -> None:
    name = unique_name("race")
    results = await asyncio.gather(
        *(
            exchange(make_client().http, SIGN_UP, {"name": variant, "password": PASSWORD})
            for variant in (name, name.upper(), fullwidth(name))
        )
    )
    bodies = [body for _, body in results]
    succeeded = [body for body in bodies if not body.get("errors")]
    assert len(succeeded) == 1, bodies
    assert [error_code(body) for body in bodies if body.get("errors")] == ["CONFLICT"] * 2


@pytest.mark.parametrize("length", [0, 7])
async def test_sign_up_with_a_too_short_password_is_bad_user_input(
    client: GraphQLClient, length: int
) -> None:
    _, body = await exchange(
        client.http, SIGN_UP, {"name": unique_name(), "password": "p" * length}
    )
    assert error_code(body) == "BAD_USER_INPUT"
    assert "8 to 1024 characters" in body["errors"][0]["message"]


async def test_sign_up_with_a_too_long_password_is_bad_user_input(client: GraphQLClient) -> None:
    _, body = await exchange(client.http, SIGN_UP, {"name": unique_name(), "password": "p" * 1025})
    assert error_code(body) == "BAD_USER_INPUT"
    assert "8 to 1024 characters" in body["errors"][0]["message"]


@pytest.mark.parametrize("length", [8, 1024])
async def test_sign_up_accepts_passwords_of_8_to_1024_characters(
    make_client: Callable[[], GraphQLClient], length: int
) -> None:
    name = unique_name()
    password = "p" * (length - 1) + "!"
    await make_client().data(SIGN_UP, {"name": name, "password": password})
    data = await make_client().data(SIGN_IN, {"name": name, "password": password})
    assert data["signIn"]["user"]["name"] == name


async def test_rejected_sign_up_creates_no_account(
    make_client: Callable[[], GraphQLClient],
) -> None:
    name = unique_name()
    _, body = await exchange(make_client().http, SIGN_UP, {"name": name, "password": "short"})
    assert error_code(body) == "BAD_USER_INPUT"
    # The name is still free: the rejected attempt left nothing behind.
    await make_client().sign_up(name)


# --- PRECIS names and confusables -------------------------------------------------------------

INVISIBLE = {
    "hangul choseong filler": "\u115f",
    "hangul jungseong filler": "\u1160",
    "hangul filler": "\u3164",
    "halfwidth hangul filler": "\uffa0",
    "zero width space": "\u200b",
    "word joiner": "\u2060",
    "soft hyphen": "\u00ad",
    "zero width joiner": "\u200d",
    "mongolian vowel separator": "\u180e",
    "variation selector 16": "\ufe0f",
    "tag latin small a": "\U000e0061",
    "left-to-right mark": "\u200e",
}


@pytest.mark.parametrize("invisible", INVISIBLE.values(), ids=INVISIBLE.keys())
@pytest.mark.parametrize("where", ["inside", "at the end"])
async def test_a_name_with_an_invisible_character_is_bad_user_input(
    client: GraphQLClient, invisible: str, where: str
) -> None:
    name = unique_name("inv")
    name = name[:3] + invisible + name[3:] if where == "inside" else name + invisible
    _, body = await exchange(client.http, SIGN_UP, {"name": name, "password": PASSWORD})
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "invisible" in body["errors"][0]["message"]


@pytest.mark.parametrize(
    "lookalike",
    [
        pytest.param(lambda name: "\u0430" + name[1:], id="cyrillic-a"),
        pytest.param(lambda name: name.replace("l", "1"), id="digit-one-for-l"),
        pytest.param(lambda name: name.replace("o", "\u03bf"), id="greek-omicron"),
        pytest.param(lambda name: name.replace("m", "rn"), id="rn-for-m"),
    ],
)
async def test_a_name_that_looks_like_a_taken_one_is_conflict(
    make_client, lookalike: Callable[[str], str]
) -> None:
    name = "al" + "mo" + uuid.uuid4().hex[:8].replace("1", "x").replace("0", "y")
    await make_client().sign_up(name)
    impostor = lookalike(name)
    assert impostor != name
    _, body = await exchange(make_client().http, SIGN_UP, {"name": impostor, "password": PASSWORD})
    assert body["errors"][0]["extensions"]["code"] == "CONFLICT", body
    # The real name still signs in, and the impostor's was never created.
    assert (await make_client().sign_in(name))["name"] == name
    _, body = await exchange(make_client().http, SIGN_IN, {"name": impostor, "password": PASSWORD})
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
