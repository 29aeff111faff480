"""Secret tokens: generated with 256 bits of randomness, stored only as a SHA-256 digest.

A token reads ``<kind>_<prefix>_<secret>``. The prefix is a public lookup key (it is stored
and shown in the admin); the secret never leaves the response that created it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX_LENGTH = 12


@dataclass(frozen=True)
class NewToken:
    prefix: str
    secret_hash: str
    plaintext: str


@dataclass(frozen=True)
class ParsedToken:
    prefix: str
    secret: str


def new_token(kind: str) -> NewToken:
    prefix = secrets.token_hex(PREFIX_LENGTH // 2)
    secret = secrets.token_urlsafe(32)
    return NewToken(prefix=prefix, secret_hash=hash_secret(secret), plaintext=f"{kind}_{prefix}_{secret}")


def parse_token(kind: str, token: str) -> ParsedToken | None:
    """Split a presented token, or return None if it is not a well-formed token of ``kind``."""
    head = f"{kind}_"
    if not isinstance(token, str) or not token.startswith(head) or len(token) > 200:
        return None
    prefix, sep, secret = token[len(head) :].partition("_")
    if not sep or len(prefix) != PREFIX_LENGTH or not secret:
        return None
    return ParsedToken(prefix=prefix, secret=secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), secret_hash)
