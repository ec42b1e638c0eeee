"""api.core.security: HKDF key separation, password hashing, JWTs and cookie encryption."""

from __future__ import annotations

import base64
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from api.core import security
from api.core.security import (
    InvalidToken,
    TokenClaims,
    decode_token,
    decrypt_cookie,
    derive_keys,
    encode_token,
    encrypt_cookie,
    hash_password,
    password_needs_rehash,
    verify_password,
)

SECRET = b"a test master secret that is long enough!"
OTHER_SECRET = b"another master secret, also long enough!!"
ITERATIONS = 1_000
CLAIM_NAMES = ("sub", "sid", "jti", "iat", "exp")


def claims(**overrides: Any) -> TokenClaims:
    now = datetime.now(UTC).replace(microsecond=0)
    values: dict[str, Any] = {
        "user_id": str(uuid.uuid4()),
        "session_id": str(uuid.uuid4()),
        "jti": security.new_token_id(),
        "issued_at": now,
        "expires_at": now + timedelta(days=3),
    }
    values.update(overrides)
    return TokenClaims(**values)


def payload_of(token_claims: TokenClaims) -> dict[str, Any]:
    return {
        "sub": token_claims.user_id,
        "sid": token_claims.session_id,
        "jti": token_claims.jti,
        "iat": int(token_claims.issued_at.timestamp()),
        "exp": int(token_claims.expires_at.timestamp()),
    }


# --- HKDF ---------------------------------------------------------------------------------


def test_derive_keys_gives_three_different_32_byte_keys() -> None:
    keys = derive_keys(SECRET)
    assert len({keys.jwt, keys.cookie, keys.pepper}) == 3
    assert all(len(key) == 32 for key in (keys.jwt, keys.cookie, keys.pepper))
    assert SECRET not in (keys.jwt, keys.cookie, keys.pepper)


def test_derive_keys_is_stable_for_a_secret_and_differs_between_secrets() -> None:
    assert derive_keys(SECRET) == derive_keys(SECRET)
    mine, other = derive_keys(SECRET), derive_keys(OTHER_SECRET)
    assert not {mine.jwt, mine.cookie, mine.pepper} & {other.jwt, other.cookie, other.pepper}


def test_a_cookie_encrypted_with_another_derived_key_does_not_decrypt() -> None:
    keys = derive_keys(SECRET)
    for wrong in (keys.jwt, keys.pepper, derive_keys(OTHER_SECRET).cookie):
        sealed = encrypt_cookie("token", key=wrong)
        with pytest.raises(InvalidToken):
            decrypt_cookie(sealed, key=keys.cookie)


def test_a_token_signed_with_another_derived_key_does_not_verify() -> None:
    keys = derive_keys(SECRET)
    for wrong in (keys.cookie, keys.pepper, derive_keys(OTHER_SECRET).jwt):
        token = encode_token(claims(), key=wrong)
        with pytest.raises(InvalidToken):
            decode_token(token, key=keys.jwt)


# --- cookie encryption --------------------------------------------------------------------


def test_cookie_encryption_round_trips_with_a_fresh_nonce_each_time() -> None:
    key = derive_keys(SECRET).cookie
    first, second = encrypt_cookie("the token", key=key), encrypt_cookie("the token", key=key)
    assert first != second
    assert "the token" not in first
    assert decrypt_cookie(first, key=key) == decrypt_cookie(second, key=key) == "the token"


def test_cookie_value_is_url_safe() -> None:
    sealed = encrypt_cookie("x" * 300, key=derive_keys(SECRET).cookie)
    assert set(sealed) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_every_single_byte_change_of_a_cookie_is_detected() -> None:
    key = derive_keys(SECRET).cookie
    raw = bytearray(base64.urlsafe_b64decode(encrypt_cookie("a token", key=key) + "=="))
    for index in range(len(raw)):
        changed = bytearray(raw)
        changed[index] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(changed)).rstrip(b"=").decode()
        with pytest.raises(InvalidToken):
            decrypt_cookie(forged, key=key)


@pytest.mark.parametrize(
    "value", ["", "A", "AAAA", "!!!not base64!!!", "é", "A" * 16, "A" * 17, "=" * 8]
)
def test_malformed_cookie_raises_invalid_token(value: str) -> None:
    with pytest.raises(InvalidToken):
        decrypt_cookie(value, key=derive_keys(SECRET).cookie)


def test_truncated_cookie_raises_invalid_token() -> None:
    key = derive_keys(SECRET).cookie
    sealed = encrypt_cookie("a token", key=key)
    for length in range(len(sealed)):
        with pytest.raises(InvalidToken):
            decrypt_cookie(sealed[:length], key=key)


# --- JWT ----------------------------------------------------------------------------------


def test_token_round_trips_its_claims_as_hs256() -> None:
    key = derive_keys(SECRET).jwt
    original = claims()
    token = encode_token(original, key=key)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert set(jwt.decode(token, key, algorithms=["HS256"])) == set(CLAIM_NAMES)
    assert decode_token(token, key=key) == original


@pytest.mark.parametrize("missing", CLAIM_NAMES)
def test_token_missing_a_claim_is_invalid(missing: str) -> None:
    key = derive_keys(SECRET).jwt
    payload = payload_of(claims())
    del payload[missing]
    with pytest.raises(InvalidToken):
        decode_token(jwt.encode(payload, key, algorithm="HS256"), key=key)


def test_token_with_alg_none_is_invalid() -> None:
    token = jwt.encode(payload_of(claims()), "", algorithm="none")
    with pytest.raises(InvalidToken):
        decode_token(token, key=derive_keys(SECRET).jwt)


def test_token_with_another_hmac_algorithm_is_invalid() -> None:
    key = derive_keys(SECRET).jwt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        token = jwt.encode(payload_of(claims()), key, algorithm="HS512")
    with pytest.raises(InvalidToken):
        decode_token(token, key=key)


def test_expired_token_is_invalid() -> None:
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    key = derive_keys(SECRET).jwt
    token = encode_token(claims(issued_at=past - timedelta(hours=1), expires_at=past), key=key)
    with pytest.raises(InvalidToken):
        decode_token(token, key=key)


@pytest.mark.parametrize("token", ["", "a.b.c", "not a jwt", "e30.e30.", "..."])
def test_malformed_token_is_invalid(token: str) -> None:
    with pytest.raises(InvalidToken):
        decode_token(token, key=derive_keys(SECRET).jwt)


def test_token_ids_are_random() -> None:
    ids = {security.new_token_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(value) >= 16 for value in ids)


# --- passwords ----------------------------------------------------------------------------


def test_password_hash_verifies_only_the_right_password() -> None:
    pepper = derive_keys(SECRET).pepper
    encoded = hash_password("correct horse", pepper=pepper, iterations=ITERATIONS)
    assert verify_password("correct horse", encoded, pepper=pepper)
    assert not verify_password("correct horsE", encoded, pepper=pepper)
    assert not verify_password("", encoded, pepper=pepper)


def test_password_hash_records_algorithm_iterations_and_salt() -> None:
    encoded = hash_password("pw", pepper=derive_keys(SECRET).pepper, iterations=1234)
    algorithm, iterations, salt, digest = encoded.split("$")
    assert algorithm == "pbkdf2_sha256"
    assert iterations == "1234"
    assert len(base64.urlsafe_b64decode(salt + "==")) == 16
    assert len(base64.urlsafe_b64decode(digest + "==")) == 32


def test_password_hash_salts_randomly() -> None:
    pepper = derive_keys(SECRET).pepper
    first = hash_password("same", pepper=pepper, iterations=ITERATIONS)
    second = hash_password("same", pepper=pepper, iterations=ITERATIONS)
    assert first.split("$")[2] != second.split("$")[2]
    assert first.split("$")[3] != second.split("$")[3]


def test_a_hash_made_with_one_pepper_does_not_verify_with_another() -> None:
    mine, other = derive_keys(SECRET).pepper, derive_keys(OTHER_SECRET).pepper
    encoded = hash_password("correct horse", pepper=mine, iterations=ITERATIONS)
    assert not verify_password("correct horse", encoded, pepper=other)


def test_verification_uses_the_iterations_stored_with_the_hash() -> None:
    pepper = derive_keys(SECRET).pepper
    encoded = hash_password("pw", pepper=pepper, iterations=1500)
    assert verify_password("pw", encoded, pepper=pepper)
    algorithm, _, salt, digest = encoded.split("$")
    assert not verify_password("pw", f"{algorithm}$1501${salt}${digest}", pepper=pepper)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "garbage",
        "pbkdf2_sha256$x$y$z",
        "pbkdf2_sha256$1000$!!$!!",
        "pbkdf2_sha256$1000$c2FsdA",
        "bcrypt$1000$c2FsdA$ZGlnZXN0",
        "pbkdf2_sha256$1000$c2FsdA$ZGlnZXN0$extra",
    ],
)
def test_malformed_stored_hash_never_verifies(encoded: str) -> None:
    assert not verify_password("pw", encoded, pepper=derive_keys(SECRET).pepper)


def test_password_needs_rehash_only_when_the_parameters_changed() -> None:
    encoded = hash_password("pw", pepper=derive_keys(SECRET).pepper, iterations=ITERATIONS)
    assert not password_needs_rehash(encoded, iterations=ITERATIONS)
    assert password_needs_rehash(encoded, iterations=ITERATIONS + 1)
    assert password_needs_rehash(encoded, iterations=ITERATIONS - 1)
    assert password_needs_rehash("bcrypt$1000$salt$hash", iterations=1000)
