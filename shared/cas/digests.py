"""Digests: ``sha256:`` followed by 64 lowercase hex digits, the only form foxctl accepts."""

from __future__ import annotations

import hashlib
import re

from shared.cas.errors import DigestMismatch, InvalidDigest

ALGORITHM = "sha256"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def parse_digest(value: str) -> str:
    """Return ``value`` when it is a valid digest; raise InvalidDigest otherwise."""
    if not isinstance(value, str) or _DIGEST.fullmatch(value) is None:
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidDigest(
            f"invalid digest {shown!r}: expected 'sha256:' and 64 lowercase hex digits",
            digest=shown,
        )
    return value


def hex_of(digest: str) -> str:
    """Return the 64 hex digits of a valid digest."""
    return parse_digest(digest).removeprefix(f"{ALGORITHM}:")


def digest_of(data: bytes) -> str:
    return format_digest(hashlib.sha256(data))


def format_digest(hasher: hashlib._Hash) -> str:
    return f"{ALGORITHM}:{hasher.hexdigest()}"


def check_digest(expected: str, hasher: hashlib._Hash) -> None:
    """Raise DigestMismatch when the bytes fed to ``hasher`` do not hash to ``expected``."""
    actual = format_digest(hasher)
    if actual != expected:
        raise DigestMismatch(
            f"stored bytes of {expected} hash to {actual}: the stored copy is corrupt; "
            "delete it and upload the artifact again",
            digest=expected,
            actual=actual,
        )
