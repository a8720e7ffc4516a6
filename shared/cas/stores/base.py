"""The store port, and the helpers every store uses to stream and verify.

Writing is two steps so that the service can take the metadata row's lock in between:
``stage`` streams the bytes somewhere only this caller sees while hashing them, and
``commit`` makes the staged copy visible under its digest. See ``shared.cas.gc`` for why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from shared.cas.digests import check_digest
from shared.cas.errors import InvalidRange

#: Size of the chunks that reads yield and local stores write.
CHUNK_BYTES = 1024 * 1024
#: Default number of objects per batch that ``list_objects`` yields.
LIST_BATCH_SIZE = 1000


@dataclass
class StagedObject:
    """Bytes a store holds out of sight until ``commit`` or ``discard``."""

    digest: str
    size_bytes: int
    # Where the store keeps the staged bytes; only the store that made it reads it.
    handle: Any = field(repr=False)


@dataclass(frozen=True)
class PutResult:
    digest: str
    size_bytes: int
    # False when the store already held the digest and kept its copy.
    created: bool


@dataclass(frozen=True)
class StoredObject:
    """An object visible under its digest."""

    digest: str
    size_bytes: int
    # When the object became visible under its digest (UTC). The file store uses the
    # file's mtime, which commit sets. An object committed again keeps its first time.
    stored_at: datetime


class ArtifactStore(Protocol):
    """Bytes by digest. Reads verify, writes are idempotent per digest."""

    def stage(self, chunks: Iterable[bytes]) -> StagedObject:
        """Stream ``chunks`` out of sight while hashing them.

        Nothing is visible under the digest until ``commit``. If ``chunks`` raises, the
        partial copy is removed and the error propagates.
        """
        ...

    def commit(self, staged: StagedObject) -> bool:
        """Make ``staged`` visible under its digest; False when it already was there.

        Consumes ``staged``: its bytes are moved or released either way.
        """
        ...

    def discard(self, staged: StagedObject) -> None:
        """Release a staged copy that will not be committed."""
        ...

    def read(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream bytes ``start`` up to but not including ``end`` (None: to the end).

        An ``end`` past the object's size is clipped to it. Raises ArtifactNotFound and
        InvalidRange here, before the first chunk. A whole read (``start`` 0, ``end``
        None) raises DigestMismatch instead of yielding the last chunk when the bytes
        do not hash to ``digest``. A range read cannot be verified.
        """
        ...

    def exists(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int:
        """Return the object's size in bytes; raise ArtifactNotFound when absent."""
        ...

    def delete(self, digest: str) -> bool:
        """Delete the object; False when there was none."""
        ...

    def stat(self, digest: str) -> StoredObject:
        """Return the object's size and time of storage; raise ArtifactNotFound when absent."""
        ...

    def list_digests(self) -> Iterator[str]:
        """Yield the digest of every stored object, in no particular order."""
        ...

    def list_objects(self, batch_size: int = LIST_BATCH_SIZE) -> Iterator[list[StoredObject]]:
        """Yield every stored object in batches of at most ``batch_size``, in no set order.

        Holds one batch in memory at a time, plus for the file store one fan-out
        directory's names. Objects stored or deleted while the listing runs may or may
        not appear in it. Staged copies never appear.
        """
        ...


def put_object(store: ArtifactStore, chunks: Iterable[bytes]) -> PutResult:
    """Stage and commit ``chunks`` in one step, outside any metadata transaction."""
    staged = store.stage(chunks)
    created = store.commit(staged)
    return PutResult(digest=staged.digest, size_bytes=staged.size_bytes, created=created)


def check_range(digest: str, start: int, end: int | None, size_bytes: int) -> int:
    """Validate a requested range against the object size; return the clipped end."""
    if start < 0 or (end is not None and end <= start):
        raise InvalidRange(
            f"invalid range start={start} end={end} for {digest}: "
            "expected 0 <= start < end (end is exclusive)",
            digest=digest,
            start=start,
            end=end,
        )
    if start > 0 and start >= size_bytes:
        raise InvalidRange(
            f"range start {start} is past the end of {digest} ({size_bytes} bytes)",
            digest=digest,
            start=start,
            size_bytes=size_bytes,
        )
    return size_bytes if end is None else min(end, size_bytes)


def check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    return batch_size


def batched(items: Iterable[StoredObject], batch_size: int) -> Iterator[list[StoredObject]]:
    """Group ``items`` into lists of ``batch_size`` (the last may be shorter, none empty)."""
    batch: list[StoredObject] = []
    for item in items:
        batch.append(item)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def is_whole(start: int, end: int | None) -> bool:
    return start == 0 and end is None


def verified(digest: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Pass ``chunks`` through, holding back the last one until the digest checks out.

    A consumer of a corrupt object therefore never receives all of its bytes: an HTTP
    response ends short of its Content-Length, which clients detect.
    """
    hasher = hashlib.sha256()
    previous: bytes | None = None
    for chunk in chunks:
        hasher.update(chunk)
        if previous is not None:
            yield previous
        previous = chunk
    check_digest(digest, hasher)
    if previous is not None:
        yield previous


def rechunk(chunks: Iterable[bytes], chunk_bytes: int) -> Iterator[bytes]:
    """Regroup ``chunks`` into pieces of exactly ``chunk_bytes`` (the last may be shorter)."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= chunk_bytes:
            yield bytes(buffer[:chunk_bytes])
            del buffer[:chunk_bytes]
    if buffer:
        yield bytes(buffer)
