"""Artifacts as fixed-size chunks in their own SQLite file (WAL), apart from the main database.

Staged chunks are written under a random ``tmp:`` key and committed in short transactions,
one per chunk, so a large upload never holds the write lock for long. Commit renames the
key to the digest in one transaction.

NOTE: a process killed while staging leaves its ``tmp:`` chunks behind; nothing removes
them yet.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from shared.cas.digests import check_digest, format_digest, parse_digest
from shared.cas.errors import ArtifactNotFound, ArtifactStoreUnavailable
from shared.cas.stores.base import (
    CHUNK_BYTES,
    LIST_BATCH_SIZE,
    StagedObject,
    StoredObject,
    check_batch_size,
    check_range,
    is_whole,
    rechunk,
    verified,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    digest TEXT PRIMARY KEY,
    size_bytes INTEGER NOT NULL,
    -- Seconds since the epoch when commit published the object.
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    object_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (object_key, seq)
);
"""


class SqliteArtifactStore:
    """Store artifacts as ``CHUNK_BYTES`` blobs in a SQLite file."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 30_000) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        with _store_errors():
            path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._open()) as connection, _store_errors():
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)

    def stage(self, chunks: Iterable[bytes]) -> StagedObject:
        key = f"tmp:{uuid.uuid4().hex}"
        hasher = hashlib.sha256()
        size_bytes = 0
        with closing(self._open()) as connection:
            try:
                for seq, chunk in enumerate(rechunk(chunks, CHUNK_BYTES)):
                    hasher.update(chunk)
                    size_bytes += len(chunk)
                    with _store_errors():
                        _insert_chunk(connection, key, seq, chunk)
                digest = format_digest(hasher)
                check_digest(digest, _hash_chunks(connection, key))
            except BaseException:
                with _store_errors():
                    _delete_chunks(connection, key)
                raise
        return StagedObject(digest=digest, size_bytes=size_bytes, handle=key)

    def commit(self, staged: StagedObject) -> bool:
        key: str = staged.handle
        with closing(self._open()) as connection, _store_errors():
            return _commit_staged(connection, key, staged)

    def discard(self, staged: StagedObject) -> None:
        key: str = staged.handle
        with closing(self._open()) as connection, _store_errors():
            _delete_chunks(connection, key)

    def read(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        connection = self._open()
        try:
            stop = check_range(digest, start, end, self._size(connection, digest))
        except BaseException:
            connection.close()
            raise
        chunks = _read_chunks(connection, digest, start, stop)
        return verified(digest, chunks) if is_whole(start, end) else chunks

    def exists(self, digest: str) -> bool:
        parse_digest(digest)
        with closing(self._open()) as connection, _store_errors():
            row = connection.execute("SELECT 1 FROM objects WHERE digest = ?", (digest,)).fetchone()
        return row is not None

    def size(self, digest: str) -> int:
        with closing(self._open()) as connection:
            return self._size(connection, digest)

    def delete(self, digest: str) -> bool:
        parse_digest(digest)
        with closing(self._open()) as connection, _store_errors():
            return _delete_object(connection, digest)

    def stat(self, digest: str) -> StoredObject:
        parse_digest(digest)
        with closing(self._open()) as connection, _store_errors():
            row = connection.execute(
                "SELECT digest, size_bytes, created_at FROM objects WHERE digest = ?", (digest,)
            ).fetchone()
        if row is None:
            raise ArtifactNotFound(f"artifact {digest} not found", digest=digest)
        return _stored_object(row)

    def list_digests(self) -> Iterator[str]:
        for batch in self.list_objects():
            for stored in batch:
                yield stored.digest

    def list_objects(self, batch_size: int = LIST_BATCH_SIZE) -> Iterator[list[StoredObject]]:
        check_batch_size(batch_size)
        after = ""
        while True:
            # One short query per batch, keyed on the last digest, so no read
            # transaction stays open (and holds back WAL checkpoints) between batches.
            with closing(self._open()) as connection, _store_errors():
                rows = connection.execute(
                    "SELECT digest, size_bytes, created_at FROM objects WHERE digest > ? "
                    "ORDER BY digest LIMIT ?",
                    (after, batch_size),
                ).fetchall()
            if not rows:
                return
            yield [_stored_object(row) for row in rows]
            after = rows[-1][0]

    def _open(self) -> sqlite3.Connection:
        with _store_errors():
            # Autocommit mode: every transaction below is an explicit BEGIN IMMEDIATE.
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def _size(self, connection: sqlite3.Connection, digest: str) -> int:
        parse_digest(digest)
        with _store_errors():
            row = connection.execute(
                "SELECT size_bytes FROM objects WHERE digest = ?", (digest,)
            ).fetchone()
        if row is None:
            raise ArtifactNotFound(f"artifact {digest} not found", digest=digest)
        return int(row[0])


def _stored_object(row: tuple[str, int, float]) -> StoredObject:
    digest, size_bytes, created_at = row
    stored_at = datetime.fromtimestamp(created_at, UTC)
    return StoredObject(digest=digest, size_bytes=int(size_bytes), stored_at=stored_at)


def _insert_chunk(connection: sqlite3.Connection, key: str, seq: int, data: bytes) -> None:
    connection.execute(
        "INSERT INTO chunks (object_key, seq, data) VALUES (?, ?, ?)", (key, seq, data)
    )


def _hash_chunks(connection: sqlite3.Connection, key: str) -> hashlib._Hash:
    """Hash what the file holds under ``key``, so a bad write fails before commit."""
    hasher = hashlib.sha256()
    with _store_errors():
        cursor = connection.execute(
            "SELECT data FROM chunks WHERE object_key = ? ORDER BY seq", (key,)
        )
        for (data,) in cursor:
            hasher.update(data)
    return hasher


def _commit_staged(connection: sqlite3.Connection, key: str, staged: StagedObject) -> bool:
    with _immediate(connection):
        present = connection.execute(
            "SELECT 1 FROM objects WHERE digest = ?", (staged.digest,)
        ).fetchone()
        if present is not None:
            connection.execute("DELETE FROM chunks WHERE object_key = ?", (key,))
            return False
        # A row left without chunks by an interrupted delete would block the rename.
        connection.execute("DELETE FROM chunks WHERE object_key = ?", (staged.digest,))
        connection.execute(
            "UPDATE chunks SET object_key = ? WHERE object_key = ?", (staged.digest, key)
        )
        connection.execute(
            "INSERT INTO objects (digest, size_bytes, created_at) VALUES (?, ?, ?)",
            (staged.digest, staged.size_bytes, time.time()),
        )
        return True


def _delete_object(connection: sqlite3.Connection, digest: str) -> bool:
    with _immediate(connection):
        deleted = connection.execute("DELETE FROM objects WHERE digest = ?", (digest,)).rowcount
        connection.execute("DELETE FROM chunks WHERE object_key = ?", (digest,))
    return bool(deleted)


def _delete_chunks(connection: sqlite3.Connection, key: str) -> None:
    connection.execute("DELETE FROM chunks WHERE object_key = ?", (key,))


def _read_chunks(
    connection: sqlite3.Connection, digest: str, start: int, stop: int
) -> Iterator[bytes]:
    # Chunks are all CHUNK_BYTES long except the last, so a position maps to a chunk.
    with closing(connection):
        position = start
        while position < stop:
            seq, offset = divmod(position, CHUNK_BYTES)
            with _store_errors():
                row = connection.execute(
                    "SELECT data FROM chunks WHERE object_key = ? AND seq = ?", (digest, seq)
                ).fetchone()
            if row is None:
                raise ArtifactNotFound(
                    f"artifact {digest} was deleted while it was being read", digest=digest
                )
            piece = bytes(row[0])[offset : offset + (stop - position)]
            yield piece
            position += len(piece)


class _immediate:
    """A BEGIN IMMEDIATE transaction that commits on success and rolls back on error."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> None:
        self._connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        self._connection.execute("COMMIT" if error is None else "ROLLBACK")


@contextmanager
def _store_errors() -> Iterator[None]:
    """Translate sqlite3 and OS errors into ArtifactStoreUnavailable."""
    try:
        yield
    except (sqlite3.Error, OSError) as error:
        raise ArtifactStoreUnavailable(
            f"artifact SQLite store failed: {error}; check the file under FOXCTL_STORAGE_ROOT",
        ) from error
