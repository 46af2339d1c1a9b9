"""Auth token secrets: ``<prefix><token id>_<43 chars of base64url>``.

The secret carries its token id so the gateway finds the record with one indexed
lookup, then compares hashes in constant time. 256 random bits make a fast hash
(SHA-256) safe: there is nothing to brute-force, unlike a password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import Final

__all__ = [
    "TOKEN_ID_LENGTH",
    "hash_secret",
    "new_secret",
    "new_token_id",
    "secret_matches",
    "token_id_of",
]

TOKEN_ID_LENGTH: Final = 16
_RANDOM_BYTES: Final = 32  # 256 bits
_BODY = re.compile(r"([a-z0-9]{16})_([A-Za-z0-9_-]{43})")


def new_token_id() -> str:
    """A fresh token id: 16 lower-case hex characters (64 bits, only an identifier)."""
    return secrets.token_hex(TOKEN_ID_LENGTH // 2)


def new_secret(prefix: str, token_id: str) -> str:
    """A new secret for ``token_id``; shown once, then only its hash is kept."""
    random_part = base64.urlsafe_b64encode(secrets.token_bytes(_RANDOM_BYTES)).rstrip(b"=")
    return f"{prefix}{token_id}_{random_part.decode('ascii')}"


def token_id_of(prefix: str, secret: str) -> str | None:
    """The token id a well-formed secret names, or None if it is not one of ours."""
    if not secret.startswith(prefix):
        return None
    found = _BODY.fullmatch(secret, len(prefix))
    return found.group(1) if found else None


def hash_secret(secret: str) -> bytes:
    """What the store keeps instead of the secret."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    """Constant-time comparison of a presented secret with a stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)
