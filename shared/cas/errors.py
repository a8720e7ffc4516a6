"""Errors of the content-addressed store.

Every error here is an ``ArtifactError``; the shared kinds it also inherits tell the web
tier which status to answer with. Stores translate OSError, sqlite3 and botocore errors
into these and chain the original.
"""

from __future__ import annotations

from shared.errors import FoxctlError, InvalidInputError, NotFoundError, UnavailableError


class ArtifactError(FoxctlError):
    code = "artifact_error"


class InvalidDigest(ArtifactError, InvalidInputError):
    code = "invalid_digest"


class InvalidRange(ArtifactError, InvalidInputError):
    code = "invalid_range"


class InvalidMediaType(ArtifactError, InvalidInputError):
    code = "invalid_media_type"


class ArtifactNotFound(ArtifactError, NotFoundError):
    code = "artifact_not_found"


class DigestMismatch(ArtifactError):
    """Bytes do not hash to the digest they are stored under: the copy is corrupt."""

    code = "digest_mismatch"


class ArtifactStoreUnavailable(ArtifactError, UnavailableError):
    """The backend (disk, SQLite file, S3) failed; the caller may try again later."""

    code = "artifact_store_unavailable"
