"""Session lifecycle: every request checks revocation and expiry; bearer tokens; refreshToken;
signOut; broken cookies; the sessions list."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from api.core.db import Database
from api.core.security import Keys, derive_keys, encrypt_cookie
from api.core.settings import Settings
from tests.support import ME, PASSWORD, SIGN_IN, SIGN_OUT, GraphQLClient, unique_name
from tests.users.helpers import (
    bearer_header,
    claims_of,
    cookie_header,
    error_code,
    exchange,
    only_set_cookie,
    session_row,
    set_cookies,
    token_of,
    update_session,
)

SIGN_UP = """
mutation SignUp($name: String!, $password: String!) {
  signUp(name: $name, password: $password) { user { id name } expiresAt }
}
"""
REFRESH = "mutation { refreshToken { user { id name } expiresAt } }"
SESSIONS = "query { sessions { id createdAt expiresAt current userAgent } }"

Headers = dict[str, str]
Credential = Callable[[str], Headers]
CREDENTIALS = [
    pytest.param(cookie_header, id="cookie"),
    pytest.param(bearer_header, id="bearer"),
]


async def signed_in(
    make_client: Callable[[], GraphQLClient],
    document: str = SIGN_UP,
    name: str | None = None,
    user_agent: str = "test-device",
) -> tuple[dict[str, Any], str]:
    """Sign up (or in) on a fresh browser; return the payload and the session cookie value."""
    response, body = await exchange(
        make_client().http,
        document,
        {"name": name or unique_name(), "password": PASSWORD},
        headers={"User-Agent": user_agent},
    )
    assert not body.get("errors"), body
    payload: dict[str, Any] = next(iter(body["data"].values()))
    return payload, only_set_cookie(response).value


async def me_with(client: GraphQLClient, headers: Headers) -> Any:
    return (await client.data(ME, headers=headers))["me"]


async def code_of(client: GraphQLClient, document: str, headers: Headers) -> str | None:
    _, body = await exchange(client.http, document, headers=headers)
    return error_code(body)


# --- every authenticated request checks the session ---------------------------------------


@pytest.mark.parametrize("credential", CREDENTIALS)
async def test_a_live_session_authenticates_by_cookie_or_bearer_header(
    make_client: Callable[[], GraphQLClient], credential: Credential
) -> None:
    payload, cookie = await signed_in(make_client)
    browser = make_client()
    assert await me_with(browser, credential(cookie)) == payload["user"]
    sessions = (await browser.data(SESSIONS, headers=credential(cookie)))["sessions"]
    assert [session["current"] for session in sessions] == [True]


async def test_bearer_header_is_matched_case_insensitively(
    make_client: Callable[[], GraphQLClient],
) -> None:
    payload, cookie = await signed_in(make_client)
    headers = {"Authorization": f"bearer {cookie}"}
    assert await me_with(make_client(), headers) == payload["user"]


@pytest.mark.parametrize("credential", CREDENTIALS)
async def test_signed_out_session_replayed_is_unauthenticated(
    make_client: Callable[[], GraphQLClient], credential: Credential
) -> None:
    _, cookie = await signed_in(make_client)
    browser = make_client()
    assert (await browser.data(SIGN_OUT, headers=credential(cookie))) == {"signOut": True}
    replay = make_client()
    assert await me_with(replay, credential(cookie)) is None
    assert await code_of(replay, SESSIONS, credential(cookie)) == "UNAUTHENTICATED"
    assert await code_of(replay, REFRESH, credential(cookie)) == "UNAUTHENTICATED"


@pytest.mark.parametrize("credential", CREDENTIALS)
async def test_expired_session_is_unauthenticated(
    make_client: Callable[[], GraphQLClient], keys: Keys, db: Database, credential: Credential
) -> None:
    _, cookie = await signed_in(make_client)
    browser = make_client()
    assert await me_with(browser, credential(cookie)) is not None
    # The JWT itself is still unexpired: only the session row says the session is over.
    await update_session(
        db, claims_of(cookie, keys)["sid"], expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    assert await me_with(browser, credential(cookie)) is None
    assert await code_of(browser, SESSIONS, credential(cookie)) == "UNAUTHENTICATED"
    assert await code_of(browser, REFRESH, credential(cookie)) == "UNAUTHENTICATED"


async def test_session_revoked_in_the_database_is_unauthenticated_at_once(
    make_client: Callable[[], GraphQLClient], keys: Keys, db: Database
) -> None:
    _, cookie = await signed_in(make_client)
    browser = make_client()
    assert await me_with(browser, cookie_header(cookie)) is not None
    await update_session(db, claims_of(cookie, keys)["sid"], revoked_at=datetime.now(UTC))
    assert await me_with(browser, cookie_header(cookie)) is None
    assert await code_of(browser, SESSIONS, cookie_header(cookie)) == "UNAUTHENTICATED"


# --- signOut ------------------------------------------------------------------------------


async def test_sign_out_deletes_the_cookie_with_the_same_attributes(
    client: GraphQLClient,
) -> None:
    response, _ = await exchange(
        client.http, SIGN_UP, {"name": unique_name(), "password": PASSWORD}
    )
    issued = only_set_cookie(response)
    response, body = await exchange(client.http, SIGN_OUT)
    assert body["data"] == {"signOut": True}
    deleted = only_set_cookie(response)
    assert deleted.name == issued.name == "session"
    assert deleted.value == ""
    assert deleted.attribute("Max-Age") == "0"
    expires = deleted.attribute("Expires")
    assert isinstance(expires, str)
    assert parsedate_to_datetime(expires) <= datetime.now(UTC)
    for attribute in ("Path", "HttpOnly", "SameSite", "Secure", "Domain"):
        assert deleted.attribute(attribute) == issued.attribute(attribute), attribute
    # The browser dropped the cookie: it is signed out.
    assert (await client.data(ME))["me"] is None


async def test_sign_out_revokes_the_session_row(
    make_client: Callable[[], GraphQLClient], keys: Keys, db: Database
) -> None:
    _, cookie = await signed_in(make_client)
    sid = claims_of(cookie, keys)["sid"]
    assert (await session_row(db, sid)).revoked_at is None
    await make_client().data(SIGN_OUT, headers=cookie_header(cookie))
    revoked_at = (await session_row(db, sid)).revoked_at
    assert revoked_at is not None
    assert revoked_at <= datetime.now(UTC)


async def test_sign_out_ends_only_the_current_device(
    make_client: Callable[[], GraphQLClient],
) -> None:
    name = unique_name()
    payload, laptop = await signed_in(make_client, name=name)
    _, phone = await signed_in(make_client, SIGN_IN, name=name)
    browser = make_client()
    await browser.data(SIGN_OUT, headers=cookie_header(laptop))
    assert await me_with(browser, cookie_header(laptop)) is None
    assert await me_with(browser, cookie_header(phone)) == payload["user"]


async def test_sign_out_without_a_session_returns_false_and_still_clears_the_cookie(
    make_client: Callable[[], GraphQLClient],
) -> None:
    for headers in ({}, cookie_header("garbage")):
        response, body = await exchange(make_client().http, SIGN_OUT, headers=headers)
        assert body == {"data": {"signOut": False}}
        deleted = only_set_cookie(response)
        assert deleted.name == "session"
        assert deleted.attribute("Max-Age") == "0"


async def test_signing_out_twice_is_harmless(make_client: Callable[[], GraphQLClient]) -> None:
    _, cookie = await signed_in(make_client)
    browser = make_client()
    assert await browser.data(SIGN_OUT, headers=cookie_header(cookie)) == {"signOut": True}
    assert await browser.data(SIGN_OUT, headers=cookie_header(cookie)) == {"signOut": False}


# --- refreshToken -------------------------------------------------------------------------


async def test_refresh_token_issues_a_new_jti_and_expiry_and_sets_a_new_cookie(
    make_client: Callable[[], GraphQLClient], keys: Keys, db: Database, settings: Settings
) -> None:
    payload, old_cookie = await signed_in(make_client)
    old_claims = claims_of(old_cookie, keys)
    # Bring the session near its end, so the new expiry is visibly later without waiting.
    near_end = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    await update_session(db, old_claims["sid"], expires_at=near_end)
    before = datetime.now(UTC)
    response, body = await exchange(make_client().http, REFRESH, headers=cookie_header(old_cookie))
    assert not body.get("errors"), body
    refreshed = body["data"]["refreshToken"]
    assert refreshed["user"] == payload["user"]
    cookie = only_set_cookie(response)
    assert cookie.name == "session"
    assert cookie.value != old_cookie
    assert cookie.attribute("HttpOnly") is True
    assert str(cookie.attribute("SameSite")).lower() == "lax"
    assert cookie.attribute("Path") == "/"
    assert cookie.attribute("Max-Age") == str(int(settings.session_ttl.total_seconds()))
    new_claims = claims_of(cookie.value, keys)
    assert new_claims["jti"] != old_claims["jti"]
    assert new_claims["sid"] == old_claims["sid"]
    assert new_claims["sub"] == old_claims["sub"]
    new_expiry = datetime.fromtimestamp(new_claims["exp"], UTC)
    assert new_expiry > near_end
    assert new_expiry >= (before + settings.session_ttl).replace(microsecond=0)
    assert new_expiry == datetime.fromisoformat(refreshed["expiresAt"])
    row = await session_row(db, old_claims["sid"])
    assert row.jti == new_claims["jti"]
    assert row.expires_at == new_expiry


@pytest.mark.parametrize("credential", CREDENTIALS)
async def test_refreshed_away_token_is_unauthenticated_and_the_new_one_works(
    make_client: Callable[[], GraphQLClient], credential: Credential
) -> None:
    payload, old_cookie = await signed_in(make_client)
    response, body = await exchange(make_client().http, REFRESH, headers=credential(old_cookie))
    assert not body.get("errors"), body
    new_cookie = only_set_cookie(response).value
    browser = make_client()
    assert await me_with(browser, credential(old_cookie)) is None
    assert await code_of(browser, SESSIONS, credential(old_cookie)) == "UNAUTHENTICATED"
    assert await code_of(browser, REFRESH, credential(old_cookie)) == "UNAUTHENTICATED"
    assert await me_with(browser, credential(new_cookie)) == payload["user"]
    sessions = (await browser.data(SESSIONS, headers=credential(new_cookie)))["sessions"]
    assert [session["current"] for session in sessions] == [True]


async def test_refresh_token_in_a_browser_replaces_its_cookie(client: GraphQLClient) -> None:
    user = await client.sign_up()
    old_cookie = client.session_cookie
    await client.data(REFRESH)
    assert client.session_cookie != old_cookie
    assert (await client.data(ME))["me"] == {"id": user["id"], "name": user["name"]}


async def test_refresh_token_without_a_session_is_unauthenticated(
    client: GraphQLClient,
) -> None:
    response, body = await exchange(client.http, REFRESH)
    assert error_code(body) == "UNAUTHENTICATED"
    assert set_cookies(response) == []


# --- broken cookies are no session --------------------------------------------------------


def _tampered(cookie: str, keys: Keys) -> str:
    middle = len(cookie) // 2
    flipped = "A" if cookie[middle] != "A" else "B"
    return cookie[:middle] + flipped + cookie[middle + 1 :]


def _truncated(cookie: str, keys: Keys) -> str:
    return cookie[: len(cookie) - 5]


def _foreign(cookie: str, keys: Keys) -> str:
    # The very same token, sealed by a server with another secret.
    other = derive_keys(b"some other deployment's secret key, 32+ bytes")
    return encrypt_cookie(token_of(cookie, keys), key=other.cookie)


def _bare_jwt(cookie: str, keys: Keys) -> str:
    # The valid signed JWT without the encryption layer.
    return token_of(cookie, keys)


def _constant(value: str) -> Callable[[str, Keys], str]:
    return lambda cookie, keys: value


BROKEN_COOKIES = [
    pytest.param(_tampered, id="tampered"),
    pytest.param(_truncated, id="truncated"),
    pytest.param(lambda cookie, keys: cookie[:10], id="truncated-to-10"),
    pytest.param(_foreign, id="foreign"),
    pytest.param(_bare_jwt, id="unencrypted-jwt"),
    pytest.param(_constant("not-base64-!!!"), id="not-base64"),
    pytest.param(_constant("A"), id="one-character"),
    pytest.param(_constant("A" * 4000), id="long-garbage"),
]


@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize("breaking", BROKEN_COOKIES)
async def test_broken_cookie_is_treated_as_no_session(
    make_client: Callable[[], GraphQLClient],
    keys: Keys,
    breaking: Callable[[str, Keys], str],
    credential: Credential,
) -> None:
    _, cookie = await signed_in(make_client)
    broken = breaking(cookie, keys)
    assert broken != cookie
    browser = make_client()
    # GraphQLClient asserts HTTP 200 on every exchange: never a 500.
    body = await browser.post(ME, headers=credential(broken))
    assert body == {"data": {"me": None}}
    assert await code_of(browser, SESSIONS, credential(broken)) == "UNAUTHENTICATED"
    assert await code_of(browser, REFRESH, credential(broken)) == "UNAUTHENTICATED"
    assert await browser.data(SIGN_OUT, headers=credential(broken)) == {"signOut": False}
    # The intact cookie still works: the broken copy changed nothing server-side.
    assert await me_with(browser, credential(cookie)) is not None


async def test_sign_up_and_sign_in_work_despite_a_broken_cookie(
    make_client: Callable[[], GraphQLClient],
) -> None:
    name = unique_name()
    garbage = cookie_header("definitely-not-a-session")
    _, body = await exchange(
        make_client().http, SIGN_UP, {"name": name, "password": PASSWORD}, headers=garbage
    )
    assert not body.get("errors"), body
    response, body = await exchange(
        make_client().http, SIGN_IN, {"name": name, "password": PASSWORD}, headers=garbage
    )
    assert body["data"]["signIn"]["user"]["name"] == name
    assert only_set_cookie(response).value


# --- the sessions list --------------------------------------------------------------------


async def test_sessions_lists_each_device_with_current_only_for_the_caller(
    make_client: Callable[[], GraphQLClient],
) -> None:
    name = unique_name()
    devices = ["laptop-browser/1", "phone-app/2", "tablet/3"]
    _, first = await signed_in(make_client, name=name, user_agent=devices[0])
    cookies = [first]
    for agent in devices[1:]:
        cookies.append((await signed_in(make_client, SIGN_IN, name=name, user_agent=agent))[1])
    listings = [
        (await make_client().data(SESSIONS, headers=cookie_header(cookie)))["sessions"]
        for cookie in cookies
    ]
    ids = {session["id"] for session in listings[0]}
    assert len(ids) == 3
    for device, listing in enumerate(listings):
        assert {session["id"] for session in listing} == ids
        assert sorted(session["userAgent"] for session in listing) == sorted(devices)
        current = [session for session in listing if session["current"]]
        assert len(current) == 1
        assert current[0]["userAgent"] == devices[device]
        for session in listing:
            created = datetime.fromisoformat(session["createdAt"])
            assert datetime.fromisoformat(session["expiresAt"]) > created


async def test_sessions_never_shows_another_users_sessions(
    make_client: Callable[[], GraphQLClient],
) -> None:
    _, alice = await signed_in(make_client, user_agent="alice-device")
    _, bob = await signed_in(make_client, user_agent="bob-device")
    alice_sessions = (await make_client().data(SESSIONS, headers=cookie_header(alice)))["sessions"]
    bob_sessions = (await make_client().data(SESSIONS, headers=cookie_header(bob)))["sessions"]
    assert [session["userAgent"] for session in alice_sessions] == ["alice-device"]
    assert [session["userAgent"] for session in bob_sessions] == ["bob-device"]
    assert not {s["id"] for s in alice_sessions} & {s["id"] for s in bob_sessions}


async def test_sessions_omits_signed_out_and_expired_devices(
    make_client: Callable[[], GraphQLClient], keys: Keys, db: Database
) -> None:
    name = unique_name()
    _, kept = await signed_in(make_client, name=name, user_agent="kept")
    _, signed_out = await signed_in(make_client, SIGN_IN, name=name, user_agent="signed-out")
    _, expired = await signed_in(make_client, SIGN_IN, name=name, user_agent="expired")
    await make_client().data(SIGN_OUT, headers=cookie_header(signed_out))
    await update_session(
        db, claims_of(expired, keys)["sid"], expires_at=datetime.now(UTC) - timedelta(minutes=1)
    )
    listing = (await make_client().data(SESSIONS, headers=cookie_header(kept)))["sessions"]
    assert [(session["userAgent"], session["current"]) for session in listing] == [("kept", True)]


async def test_sessions_without_a_session_is_unauthenticated(client: GraphQLClient) -> None:
    _, body = await exchange(client.http, SESSIONS)
    assert error_code(body) == "UNAUTHENTICATED"
    assert body["data"] is None


REVOKE = "mutation Revoke($id: ID!) { revokeSession(id: $id) }"


async def test_revoking_another_device_ends_it_on_http_and_websocket_at_once(
    server: Any, make_client: Callable[[], GraphQLClient]
) -> None:
    from tests.support import INBOX, GraphQLWebSocket

    laptop, phone, stranger = make_client(), make_client(), make_client()
    name = (await laptop.sign_up())["name"]
    await phone.sign_in(name)
    await stranger.sign_up()
    sessions = (await laptop.data(SESSIONS))["sessions"]
    (phone_session,) = [s["id"] for s in sessions if not s["current"]]
    async with GraphQLWebSocket.connect(server.ws_url, cookie=phone.session_cookie) as socket:
        await socket.subscribe(INBOX)
        # Nobody else can revoke it (not told apart from no such session).
        error = await stranger.error(REVOKE, {"id": phone_session})
        assert error["extensions"]["code"] == "NOT_FOUND"
        assert (await laptop.data(REVOKE, {"id": phone_session}))["revokeSession"] is True
        closed = await asyncio.wait_for(asyncio.shield(socket.closed), 5)
        assert closed.code == 4401
    assert (await phone.post(ME))["data"]["me"] is None
    assert (await laptop.data(ME))["me"]["name"] == name
    again = await laptop.error(REVOKE, {"id": phone_session})
    assert again["extensions"]["code"] == "NOT_FOUND"
    assert (await laptop.error(REVOKE, {"id": "nope"}))["extensions"]["code"] == "BAD_USER_INPUT"
