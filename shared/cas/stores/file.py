"""Artifacts as files under one directory, fanned out by the first two hex digits.

Layout: ``<root>/sha256/ab/ab12…`` for objects and ``<root>/tmp/`` for staged copies.
The root must be on one filesystem, because commit hard-links the staged file into place.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from shared.cas.digests import check_digest, format_digest, hex_of, parse_digest
from shared.cas.errors import ArtifactNotFound, ArtifactStoreUnavailable, InvalidDigest
from shared.cas.stores.base import (
    CHUNK_BYTES,
    LIST_BATCH_SIZE,
    StagedObject,
    StoredObject,
    batched,
    check_batch_size,
    check_range,
    is_whole,
    verified,
)


class FileArtifactStore:
    """Store artifacts as files; writes are temp file, fsync, then an atomic link."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._objects = root / "sha256"
        self._staging = root / "tmp"

    def path_of(self, digest: str) -> Path:
        hex_digits = hex_of(digest)
        return self._objects / hex_digits[:2] / hex_digits

    def stage(self, chunks: Iterable[bytes]) -> StagedObject:
        with _store_errors():
            self._staging.mkdir(parents=True, exist_ok=True)
            descriptor, name = tempfile.mkstemp(dir=self._staging, suffix=".part")
        path = Path(name)
        try:
            with os.fdopen(descriptor, "wb") as output:
                digest, size_bytes = _write_hashed(output, chunks)
            _verify_file(path, digest)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return StagedObject(digest=digest, size_bytes=size_bytes, handle=path)

    def commit(self, staged: StagedObject) -> bool:
        staged_path: Path = staged.handle
        final = self.path_of(staged.digest)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            # The link shares the staged file's inode, so this mtime becomes the
            # object's time of storage, which orphan gc measures age from.
            os.utime(staged_path)
            # A hard link creates the name only if it is free, so two writers of one
            # digest cannot both report created, and a reader never sees a partial file.
            os.link(staged_path, final)
            _fsync_directory(final.parent)
            return True
        except FileExistsError:
            return False
        except OSError as error:
            raise _unavailable(error) from error
        finally:
            staged_path.unlink(missing_ok=True)

    def discard(self, staged: StagedObject) -> None:
        staged_path: Path = staged.handle
        staged_path.unlink(missing_ok=True)

    def read(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self.path_of(digest)
        source = _open_existing(path, digest)
        try:
            stop = check_range(digest, start, end, os.fstat(source.fileno()).st_size)
            source.seek(start)
        except BaseException:
            source.close()
            raise
        chunks = _read_file(source, stop - start)
        return verified(digest, chunks) if is_whole(start, end) else chunks

    def exists(self, digest: str) -> bool:
        path = self.path_of(digest)
        with _store_errors():
            return path.is_file()

    def size(self, digest: str) -> int:
        path = self.path_of(digest)
        try:
            return path.stat().st_size
        except FileNotFoundError as error:
            raise _not_found(digest) from error
        except OSError as error:
            raise _unavailable(error) from error

    def delete(self, digest: str) -> bool:
        path = self.path_of(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as error:
            raise _unavailable(error) from error
        return True

    def stat(self, digest: str) -> StoredObject:
        path = self.path_of(digest)
        try:
            status = path.stat()
        except FileNotFoundError as error:
            raise _not_found(digest) from error
        except OSError as error:
            raise _unavailable(error) from error
        return _stored_object(digest, status)

    def list_digests(self) -> Iterator[str]:
        for digest, _path in self._walk():
            yield digest

    def list_objects(self, batch_size: int = LIST_BATCH_SIZE) -> Iterator[list[StoredObject]]:
        check_batch_size(batch_size)
        return batched(self._stat_all(), batch_size)

    def _stat_all(self) -> Iterator[StoredObject]:
        for digest, path in self._walk():
            try:
                status = path.stat()
            except FileNotFoundError:
                continue  # deleted since the directory was read
            except OSError as error:
                raise _unavailable(error) from error
            yield _stored_object(digest, status)

    def _walk(self) -> Iterator[tuple[str, Path]]:
        """Yield each object's digest and path, one fan-out directory in memory at a time.

        Names that are not a digest (an editor's backup, a stray file) are skipped.
        """
        with _store_errors():
            if not self._objects.is_dir():
                return
            fan_outs = sorted(entry for entry in self._objects.iterdir() if entry.is_dir())
        for fan_out in fan_outs:
            with _store_errors():
                paths = sorted(fan_out.iterdir())
            for path in paths:
                digest = _digest_from_name(path.name)
                if digest is not None:
                    yield digest, path


def _digest_from_name(name: str) -> str | None:
    try:
        return parse_digest(f"sha256:{name}")
    except InvalidDigest:
        return None


def _stored_object(digest: str, status: os.stat_result) -> StoredObject:
    stored_at = datetime.fromtimestamp(status.st_mtime, UTC)
    return StoredObject(digest=digest, size_bytes=status.st_size, stored_at=stored_at)


def _write_hashed(output: BinaryIO, chunks: Iterable[bytes]) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size_bytes = 0
    # Errors raised by ``chunks`` itself (a client that went away) propagate unchanged;
    # only the writes are the store's failures.
    for chunk in chunks:
        hasher.update(chunk)
        size_bytes += len(chunk)
        with _store_errors():
            output.write(chunk)
    with _store_errors():
        output.flush()
        os.fsync(output.fileno())
    return format_digest(hasher), size_bytes


def _verify_file(path: Path, digest: str) -> None:
    """Read the staged file back, so a bad write shows up before the digest is published."""
    hasher = hashlib.sha256()
    with _store_errors():
        source = path.open("rb")
    with source:
        for chunk in _read_file(source, None):
            hasher.update(chunk)
    check_digest(digest, hasher)


def _read_file(source: BinaryIO, length_bytes: int | None) -> Iterator[bytes]:
    with source:
        remaining = length_bytes
        while remaining is None or remaining > 0:
            want = CHUNK_BYTES if remaining is None else min(CHUNK_BYTES, remaining)
            with _store_errors():
                chunk = source.read(want)
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


def _open_existing(path: Path, digest: str) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError as error:
        raise _not_found(digest) from error
    except OSError as error:
        raise _unavailable(error) from error


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def _store_errors() -> Iterator[None]:
    """Translate OSError into ArtifactStoreUnavailable."""
    try:
        yield
    except OSError as error:
        raise _unavailable(error) from error


def _unavailable(error: OSError) -> ArtifactStoreUnavailable:
    return ArtifactStoreUnavailable(
        f"artifact file store failed: {error}; check the disk under FOXCTL_STORAGE_ROOT",
        path=str(error.filename) if error.filename else None,
    )


def _not_found(digest: str) -> ArtifactNotFound:
    return ArtifactNotFound(f"artifact {digest} not found", digest=digest)
