"""signIn: the right password opens a session; every failure looks the same and costs the same."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from api.core import security
from api.core.db import Database
from api.core.settings import Settings
from tests.support import ME, PASSWORD, SIGN_IN, GraphQLClient, unique_name
from tests.users.helpers import error_code, exchange, session_rows, set_cookies, user_row

SIGN_UP = """
mutation SignUp($name: String!, $password: String!) {
  signUp(name: $name, password: $password) { user { id } }
}
"""
SIGN_IN_FAILED = "Wrong name or password."


async def test_sign_in_with_the_right_password_signs_in(
    make_client: Callable[[], GraphQLClient],
) -> None:
    name = unique_name()
    user = await make_client().sign_up(name)
    browser = make_client()
    data = await browser.data(SIGN_IN, {"name": name, "password": PASSWORD})
    assert data["signIn"]["user"] == {"id": user["id"], "name": name}
    assert (await browser.data(ME))["me"] == {"id": user["id"], "name": name}


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(str.upper, id="upper-case"),
        pytest.param(lambda name: "".join(chr(ord(ch) + 0xFEE0) for ch in name), id="fullwidth"),
    ],
)
async def test_sign_in_matches_the_name_case_and_width_insensitively(
    make_client: Callable[[], GraphQLClient], variant: Callable[[str], str]
) -> None:
    name = unique_name()
    user = await make_client().sign_up(name)
    data = await make_client().data(SIGN_IN, {"name": variant(name), "password": PASSWORD})
    # The account keeps the name it was created with.
    assert data["signIn"]["user"] == {"id": user["id"], "name": name}


async def test_sign_in_with_wrong_password_is_unauthenticated(
    make_client: Callable[[], GraphQLClient],
) -> None:
    name = unique_name()
    await make_client().sign_up(name)
    browser = make_client()
    response, body = await exchange(
        browser.http, SIGN_IN, {"name": name, "password": PASSWORD + "!"}
    )
    assert error_code(body) == "UNAUTHENTICATED"
    assert body["errors"][0]["message"] == SIGN_IN_FAILED
    assert set_cookies(response) == []
    assert (await browser.data(ME))["me"] is None


async def test_sign_in_with_an_unknown_name_fails_exactly_like_a_wrong_password(
    make_client: Callable[[], GraphQLClient],
) -> None:
    name = unique_name()
    await make_client().sign_up(name)
    _, wrong_password = await exchange(
        make_client().http, SIGN_IN, {"name": name, "password": "not the password"}
    )
    response, unknown_name = await exchange(
        make_client().http, SIGN_IN, {"name": unique_name(), "password": "not the password"}
    )
    assert wrong_password["errors"][0]["message"] == unknown_name["errors"][0]["message"]
    assert wrong_password["errors"][0]["extensions"] == unknown_name["errors"][0]["extensions"]
    assert error_code(unknown_name) == "UNAUTHENTICATED"
    assert wrong_password["data"] == unknown_name["data"]
    assert set_cookies(response) == []


async def test_sign_in_with_an_unknown_name_does_the_same_password_work(
    make_client: Callable[[], GraphQLClient],
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
) -> None:
    name = unique_name()
    await make_client().sign_up(name)
    verified_iterations: list[int] = []
    original = security.verify_password

    def recording_verify(
        password: str, encoded: str, *, pepper: bytes, min_iterations: int = 0
    ) -> bool:
        verified_iterations.append(int(encoded.split("$")[1]))
        return original(password, encoded, pepper=pepper, min_iterations=min_iterations)

    monkeypatch.setattr(security, "verify_password", recording_verify)
    await exchange(make_client().http, SIGN_IN, {"name": name, "password": "wrong password"})
    await exchange(
        make_client().http, SIGN_IN, {"name": unique_name(), "password": "wrong password"}
    )
    # One full PBKDF2 verification each, at the configured cost, whether or not the name exists.
    assert verified_iterations == [settings.pbkdf2_iterations, settings.pbkdf2_iterations]


async def test_sign_in_with_a_too_long_password_is_unauthenticated(
    make_client: Callable[[], GraphQLClient],
) -> None:
    name = unique_name()
    await make_client().sign_up(name)
    _, body = await exchange(make_client().http, SIGN_IN, {"name": name, "password": "p" * 1025})
    assert error_code(body) == "UNAUTHENTICATED"
    assert body["errors"][0]["message"] == SIGN_IN_FAILED


async def test_each_sign_in_creates_a_session_row(
    make_client: Callable[[], GraphQLClient], db: Database, settings: Settings
) -> None:
    name = unique_name()
    await make_client().sign_up(name)
    user = await user_row(db, name)
    for agent in ("device-one/1", "device-two/2"):
        await make_client().data(
            SIGN_IN, {"name": name, "password": PASSWORD}, headers={"User-Agent": agent}
        )
    rows = await session_rows(db, user.id)
    assert len(rows) == 3
    assert len({row.id for row in rows}) == 3
    assert len({row.jti for row in rows}) == 3
    assert [row.user_agent for row in rows[1:]] == ["device-one/1", "device-two/2"]
    for row in rows:
        assert row.revoked_at is None
        lifetime = row.expires_at - row.created_at
        assert settings.session_ttl - timedelta(seconds=1) <= lifetime <= settings.session_ttl


async def test_sign_in_stores_a_very_long_user_agent_clipped(
    make_client: Callable[[], GraphQLClient], db: Database
) -> None:
    name = unique_name()
    await make_client().sign_up(name)
    await make_client().data(
        SIGN_IN, {"name": name, "password": PASSWORD}, headers={"User-Agent": "A" * 5000}
    )
    rows = await session_rows(db, (await user_row(db, name)).id)
    assert rows[-1].user_agent == "A" * 512


@pytest.mark.parametrize(
    "bad_name",
    [
        # PostgreSQL text cannot hold NUL; UTF-8 cannot encode a lone surrogate.
        pytest.param("nul\u0000name", id="nul"),
        pytest.param("lone\ud800surrogate", id="lone-surrogate"),
    ],
)
async def test_sign_in_with_a_name_no_account_can_have_is_unauthenticated(
    client: GraphQLClient, bad_name: str
) -> None:
    _, body = await exchange(client.http, SIGN_IN, {"name": bad_name, "password": PASSWORD})
    assert error_code(body) == "UNAUTHENTICATED"
    assert body["errors"][0]["message"] == SIGN_IN_FAILED


async def test_sign_up_with_a_password_utf8_cannot_encode_is_bad_user_input(
    client: GraphQLClient,
) -> None:
    _, body = await exchange(
        client.http, SIGN_UP, {"name": unique_name(), "password": "pass\ud800word"}
    )
    assert error_code(body) == "BAD_USER_INPUT"


async def test_sign_in_with_a_password_utf8_cannot_encode_is_unauthenticated(
    make_client: Callable[[], GraphQLClient],
) -> None:
    name = unique_name()
    await make_client().sign_up(name)
    _, body = await exchange(
        make_client().http, SIGN_IN, {"name": name, "password": "pass\ud800word"}
    )
    assert error_code(body) == "UNAUTHENTICATED"
