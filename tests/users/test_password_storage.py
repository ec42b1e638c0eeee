"""Password storage: PBKDF2-HMAC-SHA256, random salt, server pepper, parameters kept, rehash,
and hashing that never blocks the event loop."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from api.core import security
from api.core.db import Database
from api.core.errors import Unauthenticated
from api.core.security import Keys, derive_keys
from api.core.settings import Settings
from api.users import service
from api.users.passwords import PasswordHasher
from tests.conftest import make_settings
from tests.support import PASSWORD, GraphQLClient, RunningServer, running_server, unique_name
from tests.users.helpers import error_code, exchange, user_row

SIGN_IN = """
mutation SignIn($name: String!, $password: String!) {
  signIn(name: $name, password: $password) { user { id name } }
}
"""
SIGN_UP = """
mutation SignUp($name: String!, $password: String!) {
  signUp(name: $name, password: $password) { user { id name } }
}
"""
TYPENAME = "query { __typename }"

PRODUCTION_ITERATIONS = 600_000
HIGH_ITERATIONS = 300_000
# How long a gated hash waits to be released. Reached only when hashing wrongly runs on the
# event loop (nothing can release it then); it bounds that failure instead of hanging.
GATE_SECONDS = 5


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def split_hash(encoded: str) -> tuple[str, int, bytes, bytes]:
    """algorithm, iterations, salt and digest of a stored password hash."""
    algorithm, iterations, salt, digest = encoded.split("$")
    return algorithm, int(iterations), unb64(salt), unb64(digest)


@pytest.fixture
def server_with(database_url: str, broadcast_url: str, data_dir: Path) -> Callable[..., Any]:
    """Start another server on the run's database with some settings changed."""

    def start(**overrides: object) -> Any:
        return running_server(
            make_settings(database_url, broadcast_url, data_dir, **overrides),
            run_migrations=False,
        )

    return start


@pytest.fixture(scope="module")
async def high_cost_server(
    database_url: str, broadcast_url: str, data_dir: Path
) -> AsyncIterator[RunningServer]:
    """A server whose PBKDF2 cost makes each hash take a noticeable time."""
    settings = make_settings(
        database_url, broadcast_url, data_dir, pbkdf2_iterations=HIGH_ITERATIONS
    )
    async with running_server(settings, run_migrations=False) as server:
        yield server


def test_production_default_is_600000_iterations() -> None:
    assert Settings.model_fields["pbkdf2_iterations"].default == PRODUCTION_ITERATIONS


async def test_stored_hash_is_pbkdf2_hmac_sha256_at_the_default_cost_with_its_parameters(
    server_with: Callable[..., Any], db: Database, settings: Settings
) -> None:
    name = unique_name()
    default_iterations = Settings.model_fields["pbkdf2_iterations"].default
    async with server_with(pbkdf2_iterations=default_iterations) as server:
        browser = GraphQLClient(server.url)
        try:
            await browser.sign_up(name)
        finally:
            await browser.aclose()
    algorithm, iterations, salt, digest = split_hash((await user_row(db, name)).password_hash)
    assert algorithm == "pbkdf2_sha256"
    assert iterations == PRODUCTION_ITERATIONS
    assert len(salt) >= 16
    assert len(digest) == hashlib.sha256().digest_size
    # Recompute independently: PBKDF2-HMAC-SHA256 of the server-keyed HMAC of the password.
    pepper = derive_keys(settings.secret).pepper
    peppered = hmac.new(pepper, PASSWORD.encode(), hashlib.sha256).digest()
    assert hashlib.pbkdf2_hmac("sha256", peppered, salt, PRODUCTION_ITERATIONS) == digest


async def test_stored_hash_is_peppered_not_a_bare_pbkdf2_of_the_password(
    client: GraphQLClient, db: Database
) -> None:
    name = unique_name()
    await client.sign_up(name)
    _, iterations, salt, digest = split_hash((await user_row(db, name)).password_hash)
    assert hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, iterations) != digest


async def test_each_user_gets_a_random_salt(
    make_client: Callable[[], GraphQLClient], db: Database
) -> None:
    names = [unique_name(), unique_name()]
    for name in names:
        await make_client().sign_up(name, password=PASSWORD)
    first, second = [split_hash((await user_row(db, name)).password_hash) for name in names]
    assert first[2] != second[2]
    assert first[3] != second[3]


async def test_a_hash_made_with_one_pepper_does_not_verify_with_another(
    client: GraphQLClient, db: Database, keys: Keys, server_with: Callable[..., Any]
) -> None:
    name = unique_name()
    await client.sign_up(name)
    stored = (await user_row(db, name)).password_hash
    other = derive_keys(b"another server secret, at least 32 bytes long")
    assert security.verify_password(PASSWORD, stored, pepper=keys.pepper)
    assert not security.verify_password(PASSWORD, stored, pepper=other.pepper)
    # A server with another secret, on the same database, cannot check the password either.
    async with server_with(secret_key=secrets.token_urlsafe(48)) as server:
        browser = GraphQLClient(server.url)
        try:
            _, body = await exchange(browser.http, SIGN_IN, {"name": name, "password": PASSWORD})
        finally:
            await browser.aclose()
    assert error_code(body) == "UNAUTHENTICATED"


async def test_sign_in_rehashes_when_the_iteration_count_changed(
    client: GraphQLClient, db: Database, settings: Settings, server_with: Callable[..., Any]
) -> None:
    name = unique_name()
    await client.sign_up(name)
    before = split_hash((await user_row(db, name)).password_hash)
    assert before[1] == settings.pbkdf2_iterations
    raised = settings.pbkdf2_iterations * 2
    async with server_with(pbkdf2_iterations=raised) as server:
        browser = GraphQLClient(server.url)
        try:
            await browser.sign_in(name)
        finally:
            await browser.aclose()
    after = split_hash((await user_row(db, name)).password_hash)
    assert after[0] == "pbkdf2_sha256"
    assert after[1] == raised
    assert after[2] != before[2]
    # The upgraded hash still opens the account, here and on the original server.
    await client.sign_in(name)


async def test_sign_in_keeps_the_hash_when_the_iteration_count_is_unchanged(
    make_client: Callable[[], GraphQLClient], db: Database
) -> None:
    name = unique_name()
    await make_client().sign_up(name)
    before = (await user_row(db, name)).password_hash
    await make_client().sign_in(name)
    assert (await user_row(db, name)).password_hash == before


async def test_failed_sign_in_does_not_rehash(
    client: GraphQLClient, db: Database, server_with: Callable[..., Any], settings: Settings
) -> None:
    name = unique_name()
    await client.sign_up(name)
    before = (await user_row(db, name)).password_hash
    async with server_with(pbkdf2_iterations=settings.pbkdf2_iterations * 3) as server:
        browser = GraphQLClient(server.url)
        try:
            _, body = await exchange(
                browser.http, SIGN_IN, {"name": name, "password": "wrong password"}
            )
        finally:
            await browser.aclose()
    assert error_code(body) == "UNAUTHENTICATED"
    assert (await user_row(db, name)).password_hash == before


@pytest.mark.parametrize(
    ("document", "hasher"),
    [
        pytest.param(SIGN_UP, "hash_password", id="sign-up"),
        pytest.param(SIGN_IN, "verify_password", id="sign-in"),
    ],
)
async def test_password_hashing_runs_off_the_event_loop(
    high_cost_server: RunningServer,
    monkeypatch: pytest.MonkeyPatch,
    document: str,
    hasher: str,
) -> None:
    name = unique_name()
    if document is SIGN_IN:
        setup = GraphQLClient(high_cost_server.url)
        try:
            await setup.sign_up(name)
        finally:
            await setup.aclose()
    loop = asyncio.get_running_loop()
    hashing = asyncio.Event()
    release = threading.Event()
    original = getattr(security, hasher)

    def gated(*args: Any, **kwargs: Any) -> Any:
        # Announce that the hash is in flight, then hold it until the other request finished.
        loop.call_soon_threadsafe(hashing.set)
        release.wait(GATE_SECONDS)
        return original(*args, **kwargs)

    monkeypatch.setattr(security, hasher, gated)
    signer, other = GraphQLClient(high_cost_server.url), GraphQLClient(high_cost_server.url)
    try:
        account = asyncio.create_task(
            exchange(signer.http, document, {"name": name, "password": PASSWORD})
        )
        try:
            await asyncio.wait_for(hashing.wait(), 30)
            typename = await other.data(TYPENAME)
            health = await other.http.get("/healthz")
            account_still_hashing = not account.done()
        finally:
            release.set()
        _, body = await account
    finally:
        await signer.aclose()
        await other.aclose()
    assert typename == {"__typename": "Query"}
    assert health.status_code == 200
    assert account_still_hashing, "the event loop was blocked while the password was hashed"
    assert not body.get("errors"), body


async def test_sign_in_with_an_unknown_name_hashes_off_the_event_loop(
    server_with: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    hashed_on: list[int] = []
    for hasher in ("hash_password", "verify_password"):
        original = getattr(security, hasher)

        def recording(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            hashed_on.append(threading.get_ident())
            return _original(*args, **kwargs)

        monkeypatch.setattr(security, hasher, recording)
    # A secret of its own, so no decoy hash for it is cached from earlier tests.
    async with server_with(secret_key=secrets.token_urlsafe(48)) as server:
        browser = GraphQLClient(server.url)
        try:
            _, body = await exchange(
                browser.http, SIGN_IN, {"name": unique_name(), "password": PASSWORD}
            )
        finally:
            await browser.aclose()
    assert error_code(body) == "UNAUTHENTICATED"
    assert hashed_on
    assert loop_thread not in hashed_on


async def test_a_wrong_password_costs_the_current_iterations_even_for_an_older_hash(
    client: GraphQLClient, db: Database, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An account whose hash was made at the suite's 1,000 rounds, before the setting rose.
    name = (await client.sign_up())["name"]
    rounds: list[int] = []
    real_pbkdf2 = security._pbkdf2

    def counting(password: str, salt: bytes, iterations: int, pepper: bytes) -> bytes:
        rounds.append(iterations)
        return real_pbkdf2(password, salt, iterations, pepper)

    hasher = PasswordHasher(pepper=keys.pepper)
    await hasher.decoy(iterations=HIGH_ITERATIONS)  # made once, before anything is counted
    monkeypatch.setattr(security, "_pbkdf2", counting)

    async def failed_sign_in_rounds(account: str) -> int:
        rounds.clear()
        with pytest.raises(Unauthenticated):
            await service.sign_in(
                db=db,
                hasher=hasher,
                keys=keys,
                name=account,
                password="wrong password",
                iterations=HIGH_ITERATIONS,
                ttl=timedelta(hours=1),
            )
        return sum(rounds)

    unknown = await failed_sign_in_rounds(unique_name("nobody"))
    known = await failed_sign_in_rounds(name)
    assert unknown == HIGH_ITERATIONS
    assert known == unknown
