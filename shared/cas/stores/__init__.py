"""Artifact stores: where the bytes live. Metadata lives in the main database."""

from __future__ import annotations

from typing import Any

from shared.cas.stores.base import (
    ArtifactStore,
    PutResult,
    StagedObject,
    StoredObject,
    put_object,
)
from shared.cas.stores.file import FileArtifactStore
from shared.cas.stores.s3 import S3ArtifactStore, make_s3_client
from shared.cas.stores.sqlite import SqliteArtifactStore
from shared.cas.stores.traced import TracedArtifactStore
from shared.settings import Settings


def make_artifact_store(settings: Settings, s3_client: Any = None) -> ArtifactStore:
    """Build the store that ``FOXCTL_CAS_DRIVER`` selects.

    For ``s3``, ``s3_client`` defaults to a boto3 client built from the settings and the
    standard AWS credential chain. Every store is wrapped for spans and byte counts.
    """
    return TracedArtifactStore(_make_inner_store(settings, s3_client), settings.cas_driver)


def _make_inner_store(settings: Settings, s3_client: Any) -> ArtifactStore:
    if settings.cas_driver == "file":
        return FileArtifactStore(settings.storage_root / "cas")
    if settings.cas_driver == "sqlite":
        return SqliteArtifactStore(settings.storage_root / "cas.db")
    return S3ArtifactStore.from_settings(
        settings, s3_client if s3_client is not None else make_s3_client(settings)
    )


__all__ = [
    "ArtifactStore",
    "FileArtifactStore",
    "PutResult",
    "S3ArtifactStore",
    "SqliteArtifactStore",
    "StagedObject",
    "StoredObject",
    "TracedArtifactStore",
    "make_artifact_store",
    "make_s3_client",
    "put_object",
]
