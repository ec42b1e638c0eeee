"""The session cookie: its attributes, the HS256 JWT it encrypts, and forged tokens refused."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from api.core.db import Database
from api.core.security import Keys, derive_keys
from api.core.settings import Settings
from tests.conftest import make_settings
from tests.support import (
    ME,
    PASSWORD,
    SIGN_IN,
    SIGN_OUT,
    GraphQLClient,
    RunningServer,
    running_server,
    unique_name,
)
from tests.users.helpers import (
    claims_of,
    cookie_header,
    error_code,
    exchange,
    mint_cookie,
    only_set_cookie,
    session_rows,
    token_of,
    user_row,
)

SIGN_UP = """
mutation SignUp($name: String!, $password: String!) {
  signUp(name: $name, password: $password) { user { id name } expiresAt }
}
"""
SESSIONS = "query { sessions { id current } }"
CLAIMS = {"sub", "sid", "jti", "iat", "exp"}
THREE_DAYS = 259_200


@pytest.fixture(scope="module")
async def secure_server(
    database_url: str, broadcast_url: str, data_dir: Path
) -> AsyncIterator[RunningServer]:
    """A server told to mark its cookie Secure (as behind HTTPS in production)."""
    settings = make_settings(database_url, broadcast_url, data_dir, cookie_secure=True)
    async with running_server(settings, run_migrations=False) as server:
        yield server


async def signed_up(make_client: Callable[[], GraphQLClient]) -> tuple[dict[str, Any], str]:
    """A new account's sign-up payload and its session cookie value."""
    response, body = await exchange(
        make_client().http, SIGN_UP, {"name": unique_name(), "password": PASSWORD}
    )
    assert not body.get("errors"), body
    return body["data"]["signUp"], only_set_cookie(response).value


async def assert_signed_in_with(cookie: str, make_client: Callable[[], GraphQLClient]) -> str:
    """The cookie value opens a session: `me` is a user and `sessions` answers. Return the id."""
    browser = make_client()
    me = (await browser.data(ME, headers=cookie_header(cookie)))["me"]
    assert me is not None
    await browser.data(SESSIONS, headers=cookie_header(cookie))
    user_id: str = me["id"]
    return user_id


async def assert_refused(cookie: str, make_client: Callable[[], GraphQLClient]) -> None:
    """The cookie value is treated as no session at all."""
    browser = make_client()
    assert (await browser.data(ME, headers=cookie_header(cookie)))["me"] is None
    _, body = await exchange(browser.http, SESSIONS, headers=cookie_header(cookie))
    assert error_code(body) == "UNAUTHENTICATED"


def test_default_session_ttl_is_three_days() -> None:
    default = Settings.model_fields["session_ttl"].default
    assert default == timedelta(days=3)
    assert default.total_seconds() == THREE_DAYS


@pytest.mark.parametrize("document", [SIGN_UP, SIGN_IN], ids=["sign-up", "sign-in"])
async def test_session_cookie_is_httponly_lax_path_root_with_max_age_of_the_ttl(
    make_client: Callable[[], GraphQLClient], settings: Settings, document: str
) -> None:
    name = unique_name()
    if document is SIGN_IN:
        await make_client().sign_up(name)
    response, body = await exchange(
        make_client().http, document, {"name": name, "password": PASSWORD}
    )
    assert not body.get("errors"), body
    cookie = only_set_cookie(response)
    assert cookie.name == "session"
    assert cookie.value
    assert cookie.attribute("HttpOnly") is True
    assert str(cookie.attribute("SameSite")).lower() == "lax"
    assert cookie.attribute("Path") == "/"
    assert settings.session_ttl.total_seconds() == THREE_DAYS
    assert cookie.attribute("Max-Age") == str(THREE_DAYS)
    # Plain HTTP in development: a Secure cookie would never come back.
    assert cookie.attribute("Secure") is None
    assert cookie.attribute("Domain") is None


async def test_cookie_secure_adds_secure_and_the_host_prefix(
    secure_server: RunningServer,
) -> None:
    browser = GraphQLClient(secure_server.url)
    try:
        response, body = await exchange(
            browser.http, SIGN_UP, {"name": unique_name(), "password": PASSWORD}
        )
        assert not body.get("errors"), body
        cookie = only_set_cookie(response)
        assert cookie.name == "__Host-session"
        assert cookie.attribute("Secure") is True
        assert cookie.attribute("HttpOnly") is True
        assert str(cookie.attribute("SameSite")).lower() == "lax"
        assert cookie.attribute("Path") == "/"
        assert cookie.attribute("Domain") is None
        assert cookie.attribute("Max-Age") == str(THREE_DAYS)
        # The server reads its session from the prefixed name...
        presented = cookie_header(cookie.value, name="__Host-session")
        me = (await browser.data(ME, headers=presented))["me"]
        assert me == body["data"]["signUp"]["user"]
        # ...and deletes that cookie on sign-out with the same attributes.
        response, body = await exchange(browser.http, SIGN_OUT, headers=presented)
        assert body["data"] == {"signOut": True}
        deleted = only_set_cookie(response)
        assert deleted.name == "__Host-session"
        assert deleted.attribute("Max-Age") == "0"
        assert deleted.attribute("Secure") is True
        assert deleted.attribute("HttpOnly") is True
        assert str(deleted.attribute("SameSite")).lower() == "lax"
        assert deleted.attribute("Path") == "/"
    finally:
        await browser.aclose()


async def test_session_token_is_an_hs256_jwt_with_sub_sid_jti_iat_and_exp(
    make_client: Callable[[], GraphQLClient], keys: Keys, db: Database, settings: Settings
) -> None:
    payload, cookie = await signed_up(make_client)
    token = token_of(cookie, keys)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    claims = claims_of(cookie, keys)
    assert set(claims) == CLAIMS
    user = await user_row(db, payload["user"]["name"])
    [row] = await session_rows(db, user.id)
    assert claims["sub"] == str(user.id) == payload["user"]["id"]
    assert claims["sid"] == str(row.id)
    assert claims["jti"] == row.jti
    assert claims["exp"] == int(row.expires_at.timestamp())
    assert datetime.fromtimestamp(claims["exp"], UTC) == datetime.fromisoformat(
        payload["expiresAt"]
    )
    ttl = int(settings.session_ttl.total_seconds())
    assert ttl - 1 <= claims["exp"] - claims["iat"] <= ttl


async def test_the_cookie_value_is_encrypted_not_a_readable_jwt(
    make_client: Callable[[], GraphQLClient], keys: Keys
) -> None:
    _, cookie = await signed_up(make_client)
    token = token_of(cookie, keys)
    assert cookie.count(".") != 2
    assert token.split(".")[1] not in cookie
    with pytest.raises(jwt.PyJWTError):
        jwt.decode(cookie, keys.jwt, algorithms=["HS256"])


async def test_a_hand_minted_token_with_every_claim_is_accepted(
    make_client: Callable[[], GraphQLClient], keys: Keys
) -> None:
    # The control for the forgeries below: the same construction with nothing wrong works.
    payload, cookie = await signed_up(make_client)
    minted = mint_cookie(claims_of(cookie, keys), keys)
    assert await assert_signed_in_with(minted, make_client) == payload["user"]["id"]


@pytest.mark.parametrize("claim", sorted(CLAIMS))
async def test_a_token_missing_a_claim_is_refused(
    make_client: Callable[[], GraphQLClient], keys: Keys, claim: str
) -> None:
    _, cookie = await signed_up(make_client)
    claims = claims_of(cookie, keys)
    del claims[claim]
    await assert_refused(mint_cookie(claims, keys), make_client)


async def test_a_token_with_alg_none_is_refused(
    make_client: Callable[[], GraphQLClient], keys: Keys
) -> None:
    _, cookie = await signed_up(make_client)
    forged = mint_cookie(claims_of(cookie, keys), keys, algorithm="none")
    assert jwt.get_unverified_header(token_of(forged, keys))["alg"] == "none"
    await assert_refused(forged, make_client)


async def test_a_token_signed_with_another_key_is_refused(
    make_client: Callable[[], GraphQLClient], keys: Keys
) -> None:
    _, cookie = await signed_up(make_client)
    other = derive_keys(b"another server secret, at least 32 bytes long")
    for wrong_key in (other.jwt, keys.cookie, keys.pepper):
        await assert_refused(
            mint_cookie(claims_of(cookie, keys), keys, jwt_key=wrong_key), make_client
        )


async def test_a_token_signed_with_another_hmac_algorithm_is_refused(
    make_client: Callable[[], GraphQLClient], keys: Keys
) -> None:
    # The right key but HS512: the algorithm is pinned, not taken from the token's header.
    _, cookie = await signed_up(make_client)
    with warnings.catch_warnings():
        # PyJWT finds a 32-byte key short for HS512; the forgery is the point here.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        forged = mint_cookie(claims_of(cookie, keys), keys, algorithm="HS512")
    assert jwt.get_unverified_header(token_of(forged, keys))["alg"] == "HS512"
    await assert_refused(forged, make_client)


async def test_an_expired_token_is_refused_while_its_session_is_live(
    make_client: Callable[[], GraphQLClient], keys: Keys
) -> None:
    _, cookie = await signed_up(make_client)
    claims = claims_of(cookie, keys)
    now = int(datetime.now(UTC).timestamp())
    claims.update(iat=now - 7200, exp=now - 3600)
    await assert_refused(mint_cookie(claims, keys), make_client)
    await assert_signed_in_with(cookie, make_client)


async def test_a_token_with_a_malformed_session_id_is_refused(
    make_client: Callable[[], GraphQLClient], keys: Keys
) -> None:
    _, cookie = await signed_up(make_client)
    for field, value in (("sid", "not-a-uuid"), ("sub", "not-a-uuid"), ("sid", 12345)):
        claims = claims_of(cookie, keys)
        claims[field] = value
        await assert_refused(mint_cookie(claims, keys), make_client)


async def test_a_token_naming_another_users_session_is_refused(
    make_client: Callable[[], GraphQLClient], keys: Keys
) -> None:
    _, mine = await signed_up(make_client)
    _, theirs = await signed_up(make_client)
    claims = claims_of(mine, keys)
    claims["sid"] = claims_of(theirs, keys)["sid"]
    await assert_refused(mint_cookie(claims, keys), make_client)
    claims = claims_of(mine, keys)
    claims["sid"] = str(uuid.uuid4())
    await assert_refused(mint_cookie(claims, keys), make_client)


async def test_a_valid_token_encrypted_with_another_key_is_refused(
    make_client: Callable[[], GraphQLClient], keys: Keys
) -> None:
    _, cookie = await signed_up(make_client)
    other = derive_keys(b"another server secret, at least 32 bytes long")
    for wrong_key in (other.cookie, keys.jwt):
        await assert_refused(
            mint_cookie(claims_of(cookie, keys), keys, cookie_key=wrong_key), make_client
        )
