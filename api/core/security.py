"""All cryptography of the service: key derivation, password hashing, JWTs, cookie encryption."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PASSWORD_ALGORITHM = "pbkdf2_sha256"  # noqa: S105 - a label, not a password
JWT_ALGORITHM = "HS256"
_SALT_BYTES = 16
_NONCE_BYTES = 12
_COOKIE_AAD = b"chat-backend session cookie v1"
_PADDING_SALT = b"chat-backend padding rounds"


@dataclass(frozen=True, slots=True)
class Keys:
    """Independent keys derived from the master secret, so one leak does not give all three."""

    jwt: bytes
    cookie: bytes
    pepper: bytes


def derive_keys(secret: bytes) -> Keys:
    """Derive the JWT, cookie and pepper keys from the master secret with HKDF-SHA256."""

    def derive(purpose: bytes) -> bytes:
        return HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"chat-backend/" + purpose
        ).derive(secret)

    return Keys(jwt=derive(b"jwt"), cookie=derive(b"cookie"), pepper=derive(b"pepper"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _pbkdf2(password: str, salt: bytes, iterations: int, pepper: bytes) -> bytes:
    # The pepper keys an HMAC of the password, so a stolen database alone cannot be brute-forced.
    peppered = hmac.new(pepper, password.encode(), hashlib.sha256).digest()
    return hashlib.pbkdf2_hmac("sha256", peppered, salt, iterations)


def hash_password(password: str, *, pepper: bytes, iterations: int) -> str:
    """Hash a password as `pbkdf2_sha256$iterations$salt$hash` (CPU-bound: run off the loop)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _pbkdf2(password, salt, iterations, pepper)
    return f"{PASSWORD_ALGORITHM}${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str, *, pepper: bytes, min_iterations: int = 0) -> bool:
    """Check a password against a stored hash in constant time (CPU-bound: run off the loop).

    It costs at least `min_iterations` rounds, also when the stored hash has fewer (made
    before PBKDF2_ITERATIONS was raised) or cannot be read: a wrong password for such an
    account must take as long as one for an unknown name, or timing tells which names exist.
    """
    spent = 0
    matches = False
    try:
        algorithm, iterations, salt, digest = encoded.split("$")
        if algorithm == PASSWORD_ALGORITHM:
            expected = _unb64(digest)
            spent = int(iterations)
            matches = hmac.compare_digest(_pbkdf2(password, _unb64(salt), spent, pepper), expected)
    except (ValueError, binascii.Error):
        matches = False
    if spent < min_iterations:
        _pbkdf2(password, _PADDING_SALT, min_iterations - spent, pepper)
    return matches


def password_needs_rehash(encoded: str, *, iterations: int) -> bool:
    """True when a stored hash was made with other parameters than the current ones."""
    algorithm, _, rest = encoded.partition("$")
    stored_iterations = rest.partition("$")[0]
    return algorithm != PASSWORD_ALGORITHM or stored_iterations != str(iterations)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The claims of a session token."""

    user_id: str
    session_id: str
    jti: str
    issued_at: datetime
    expires_at: datetime


class InvalidToken(Exception):
    """The token or cookie is missing, malformed, tampered with, foreign or expired."""


def encode_token(claims: TokenClaims, *, key: bytes) -> str:
    """Sign the session claims as an HS256 JWT."""
    payload = {
        "sub": claims.user_id,
        "sid": claims.session_id,
        "jti": claims.jti,
        "iat": int(claims.issued_at.timestamp()),
        "exp": int(claims.expires_at.timestamp()),
    }
    return jwt.encode(payload, key, algorithm=JWT_ALGORITHM)


def decode_token(token: str, *, key: bytes) -> TokenClaims:
    """Verify an HS256 JWT (algorithm pinned, every claim required) and return its claims."""
    try:
        payload = jwt.decode(
            token,
            key,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["sub", "sid", "jti", "iat", "exp"]},
        )
        return TokenClaims(
            user_id=str(payload["sub"]),
            session_id=str(payload["sid"]),
            jti=str(payload["jti"]),
            issued_at=datetime.fromtimestamp(payload["iat"], UTC),
            expires_at=datetime.fromtimestamp(payload["exp"], UTC),
        )
    except (jwt.PyJWTError, TypeError, ValueError, OverflowError) as error:
        raise InvalidToken(str(error)) from error


def encrypt_cookie(value: str, *, key: bytes) -> str:
    """Encrypt and authenticate a cookie value with AES-256-GCM (a random nonce each time)."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return _b64(nonce + AESGCM(key).encrypt(nonce, value.encode(), _COOKIE_AAD))


def decrypt_cookie(value: str, *, key: bytes) -> str:
    """Decrypt a cookie value; any tampering, truncation or foreign key raises InvalidToken."""
    try:
        raw = _unb64(value)
        if len(raw) <= _NONCE_BYTES:
            raise InvalidToken("cookie too short")
        plain = AESGCM(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _COOKIE_AAD)
        return plain.decode()
    except (InvalidTag, binascii.Error, ValueError, UnicodeError) as error:
        raise InvalidToken("cookie cannot be decrypted") from error


def new_token_id() -> str:
    """A random, URL-safe identifier for a token (jti)."""
    return secrets.token_urlsafe(16)
