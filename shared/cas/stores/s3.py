"""Artifacts as objects in an S3 bucket (AWS or any S3-compatible server).

Layout: ``<prefix>sha256/ab/ab12…`` for objects and ``<prefix>tmp/<random>`` for staged
copies. A digest is known only after the last byte, so to skip the upload of a digest
the bucket already holds, ``stage`` first spools the stream into a local temporary file
(kept in memory while it is smaller than one part) and hashes it. Only a new digest is
then uploaded: to a temporary key, by multipart upload in parts of ``part_bytes`` when it
is at least one part long. Any failure aborts the multipart upload, so S3 drops the
parts and no partial object becomes visible.

The staged object stays under its temporary key until ``commit`` copies it to the
digest's key with a server-side copy. Garbage collection may delete the digest's key
at any time before the service takes the metadata row's lock, but never a temporary key.

Verification reads the temporary object back and hashes it. S3's ETag is not a content
hash (it differs for multipart uploads and for SSE-KMS), and support for
``ChecksumSHA256`` varies among S3-compatible servers (moto 5.2 accepts a wrong one), so
a read-back is the check that holds everywhere, at the cost of one download per new
object.
"""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import IO, Any

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.cas.digests import check_digest, format_digest, hex_of, parse_digest
from shared.cas.errors import (
    ArtifactError,
    ArtifactNotFound,
    ArtifactStoreUnavailable,
    InvalidDigest,
    InvalidRange,
)
from shared.cas.stores.base import (
    CHUNK_BYTES,
    LIST_BATCH_SIZE,
    StagedObject,
    StoredObject,
    check_batch_size,
    check_range,
    is_whole,
    verified,
)
from shared.settings import Settings, SettingsError

log = structlog.get_logger(__name__)

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


def make_s3_client(settings: Settings) -> Any:
    """Build a boto3 S3 client; credentials come from the standard AWS chain."""
    return boto3.client(
        "s3",
        region_name=settings.cas_s3_region,
        endpoint_url=settings.cas_s3_endpoint,
        config=Config(retries={"mode": "standard", "max_attempts": 5}),
    )


@dataclass
class _Staged:
    spool: IO[bytes]
    # None when the bucket already held the digest at staging time: nothing was uploaded.
    temp_key: str | None


class S3ArtifactStore:
    """Store artifacts in an S3 bucket through an injected boto3 client."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        prefix: str = "",
        part_bytes: int = 8 * 1024 * 1024,
        spool_dir: Path | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix if prefix == "" or prefix.endswith("/") else f"{prefix}/"
        self.part_bytes = part_bytes
        self._spool_dir_name = None if spool_dir is None else str(spool_dir)

    @classmethod
    def from_settings(cls, settings: Settings, client: Any) -> S3ArtifactStore:
        if not settings.cas_s3_bucket:
            raise SettingsError(
                "FOXCTL_CAS_S3_BUCKET is missing: FOXCTL_CAS_DRIVER=s3 needs a bucket name"
            )
        return cls(
            client,
            settings.cas_s3_bucket,
            prefix=settings.cas_s3_prefix,
            part_bytes=settings.cas_s3_part_bytes,
        )

    def key_of(self, digest: str) -> str:
        hex_digits = hex_of(digest)
        return f"{self.prefix}sha256/{hex_digits[:2]}/{hex_digits}"

    def stage(self, chunks: Iterable[bytes]) -> StagedObject:
        # Closed by commit or discard, or below when staging fails.
        spool = tempfile.SpooledTemporaryFile(max_size=self.part_bytes, dir=self._spool_dir_name)  # noqa: SIM115
        try:
            digest, size_bytes = _spool(spool, chunks)
            temp_key = None if self.exists(digest) else self._upload_verified(spool, digest)
        except BaseException:
            spool.close()
            raise
        staged = _Staged(spool=spool, temp_key=temp_key)
        return StagedObject(digest=digest, size_bytes=size_bytes, handle=staged)

    def commit(self, staged: StagedObject) -> bool:
        handle: _Staged = staged.handle
        try:
            if self.exists(staged.digest):
                return False
            if handle.temp_key is None:
                # The digest was deleted after staging skipped the upload; upload it now.
                handle.temp_key = self._upload_verified(handle.spool, staged.digest)
            self._copy(handle.temp_key, self.key_of(staged.digest))
            return True
        finally:
            self.discard(staged)

    def discard(self, staged: StagedObject) -> None:
        handle: _Staged = staged.handle
        handle.spool.close()
        if handle.temp_key is not None:
            with _s3_errors():
                self.client.delete_object(Bucket=self.bucket, Key=handle.temp_key)
            handle.temp_key = None

    def read(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        key = self.key_of(digest)
        if is_whole(start, end):
            with _s3_errors(digest):
                response = self.client.get_object(Bucket=self.bucket, Key=key)
            return verified(digest, _iter_body(response["Body"]))

        stop = check_range(digest, start, end, self.size(digest))
        if stop == start:
            return iter(())
        with _s3_errors(digest):
            response = self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{stop - 1}"
            )
        return _iter_body(response["Body"])

    def exists(self, digest: str) -> bool:
        try:
            self.size(digest)
        except ArtifactNotFound:
            return False
        return True

    def size(self, digest: str) -> int:
        return self.stat(digest).size_bytes

    def stat(self, digest: str) -> StoredObject:
        key = self.key_of(digest)
        with _s3_errors(digest):
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        # LastModified is when commit's copy wrote the digest's key.
        return StoredObject(
            digest=digest,
            size_bytes=int(response["ContentLength"]),
            stored_at=response["LastModified"],
        )

    def delete(self, digest: str) -> bool:
        if not self.exists(digest):
            return False
        with _s3_errors(digest):
            self.client.delete_object(Bucket=self.bucket, Key=self.key_of(digest))
        return True

    def list_digests(self) -> Iterator[str]:
        for batch in self.list_objects():
            for stored in batch:
                yield stored.digest

    def list_objects(self, batch_size: int = LIST_BATCH_SIZE) -> Iterator[list[StoredObject]]:
        # A page contains at most 1000 keys (the S3 limit on MaxKeys), so a larger
        # batch_size gives batches of 1000.
        check_batch_size(batch_size)
        paginator = self.client.get_paginator("list_objects_v2")
        pages = iter(
            paginator.paginate(
                Bucket=self.bucket,
                Prefix=f"{self.prefix}sha256/",
                PaginationConfig={"PageSize": batch_size},
            )
        )
        while True:
            with _s3_errors():
                page = next(pages, None)
            if page is None:
                return
            batch = _stored_objects(page.get("Contents", []))
            if batch:
                yield batch

    def _upload_verified(self, spool: IO[bytes], digest: str) -> str:
        """Upload the spool to a new temporary key and check it hashes to ``digest``."""
        temp_key = f"{self.prefix}tmp/{uuid.uuid4().hex}"
        spool.seek(0)
        self._upload(spool, temp_key)
        try:
            self._verify(temp_key, digest)
        except BaseException:
            with _s3_errors():
                self.client.delete_object(Bucket=self.bucket, Key=temp_key)
            raise
        return temp_key

    def _upload(self, spool: IO[bytes], key: str) -> None:
        first = spool.read(self.part_bytes)
        if len(first) < self.part_bytes:
            with _s3_errors():
                self.client.put_object(Bucket=self.bucket, Key=key, Body=first)
            return

        with _s3_errors():
            created = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload_id = str(created["UploadId"])
        try:
            parts = self._upload_parts(spool, key, upload_id, first)
            with _s3_errors():
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            self._abort(key, upload_id)
            raise

    def _upload_parts(
        self, spool: IO[bytes], key: str, upload_id: str, first: bytes
    ) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        data = first
        for number in count(1):
            if not data:
                break
            with _s3_errors():
                response = self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                )
            parts.append({"PartNumber": number, "ETag": response["ETag"]})
            data = spool.read(self.part_bytes)
        return parts

    def _abort(self, key: str, upload_id: str) -> None:
        # The original error matters more than a failed abort; S3 lifecycle rules for
        # incomplete multipart uploads are the backstop for parts left this way.
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (BotoCoreError, ClientError) as error:
            log.warning(
                "aborting a multipart upload failed", key=key, upload_id=upload_id, error=str(error)
            )

    def _verify(self, key: str, digest: str) -> None:
        with _s3_errors():
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        hasher = hashlib.sha256()
        for chunk in _iter_body(response["Body"]):
            hasher.update(chunk)
        check_digest(digest, hasher)

    def _copy(self, source_key: str, target_key: str) -> None:
        # The managed copy switches to a multipart copy above 5 GB, the CopyObject limit.
        with _s3_errors():
            self.client.copy(
                CopySource={"Bucket": self.bucket, "Key": source_key},
                Bucket=self.bucket,
                Key=target_key,
            )


def _spool(spool: IO[bytes], chunks: Iterable[bytes]) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size_bytes = 0
    for chunk in chunks:
        hasher.update(chunk)
        size_bytes += len(chunk)
        try:
            spool.write(chunk)
        except OSError as error:
            raise ArtifactStoreUnavailable(
                f"spooling an upload to local disk failed: {error}; check free space in the "
                "temporary directory",
            ) from error
    return format_digest(hasher), size_bytes


def _iter_body(body: Any) -> Iterator[bytes]:
    try:
        with _s3_errors():
            yield from body.iter_chunks(CHUNK_BYTES)
    finally:
        body.close()


def _stored_objects(contents: list[dict[str, Any]]) -> list[StoredObject]:
    """Turn a listing page into objects, skipping keys that do not end in a digest."""
    batch = []
    for item in contents:
        digest = _digest_from_key(str(item["Key"]))
        if digest is not None:
            batch.append(
                StoredObject(
                    digest=digest, size_bytes=int(item["Size"]), stored_at=item["LastModified"]
                )
            )
    return batch


def _digest_from_key(key: str) -> str | None:
    try:
        return parse_digest(f"sha256:{key.rsplit('/', 1)[-1]}")
    except InvalidDigest:
        return None


@contextmanager
def _s3_errors(digest: str | None = None) -> Iterator[None]:
    """Translate botocore errors into artifact errors, keeping the original as cause."""
    try:
        yield
    except ClientError as error:
        raise _translate(error, digest) from error
    except BotoCoreError as error:
        raise ArtifactStoreUnavailable(
            f"S3 request failed: {error}; check FOXCTL_CAS_S3_ENDPOINT and the network",
        ) from error


def _translate(error: ClientError, digest: str | None) -> ArtifactError:
    code = str(error.response.get("Error", {}).get("Code", ""))
    if code in _NOT_FOUND_CODES:
        return ArtifactNotFound(f"artifact {digest} not found", digest=digest)
    if code == "InvalidRange":
        return InvalidRange(f"invalid range for {digest}: {error}", digest=digest)
    return ArtifactStoreUnavailable(
        f"S3 request failed with {code or 'an unknown error'}: {error}; check the bucket, "
        "FOXCTL_CAS_S3_* settings and the AWS credentials",
        code_from_s3=code,
    )
