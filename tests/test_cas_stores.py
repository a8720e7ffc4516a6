"""One contract for every artifact store: file, SQLite, and S3 on a loopback moto server."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from shared.cas.digests import digest_of
from shared.cas.errors import (
    ArtifactNotFound,
    ArtifactStoreUnavailable,
    DigestMismatch,
    InvalidDigest,
    InvalidRange,
)
from shared.cas.stores import (
    ArtifactStore,
    FileArtifactStore,
    S3ArtifactStore,
    SqliteArtifactStore,
    TracedArtifactStore,
    make_artifact_store,
    put_object,
)
from shared.settings import load_settings

MIB = 1024 * 1024
PART_BYTES = 5 * MIB
UPLOAD_OPERATIONS = {
    "PutObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "CopyObject",
    "UploadPartCopy",
}


@dataclass
class StoreCase:
    """A store under test and what a test needs to look behind its back."""

    name: str
    store: ArtifactStore
    corrupt: Callable[[str], None]
    leftovers: Callable[[], list[str]]
    calls: list[str]


def _file_case(tmp_path: Path) -> StoreCase:
    store = FileArtifactStore(tmp_path / "cas")

    def corrupt(digest: str) -> None:
        path = store.path_of(digest)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    def leftovers() -> list[str]:
        staging = tmp_path / "cas" / "tmp"
        return [p.name for p in staging.iterdir()] if staging.exists() else []

    return StoreCase("file", store, corrupt, leftovers, [])


def _sqlite_case(tmp_path: Path) -> StoreCase:
    path = tmp_path / "cas.db"
    store = SqliteArtifactStore(path)

    def corrupt(digest: str) -> None:
        with sqlite3.connect(path) as connection:
            (data,) = connection.execute(
                "SELECT data FROM chunks WHERE object_key = ? AND seq = 0", (digest,)
            ).fetchone()
            changed = bytearray(data)
            changed[len(changed) // 2] ^= 0xFF
            connection.execute(
                "UPDATE chunks SET data = ? WHERE object_key = ? AND seq = 0",
                (bytes(changed), digest),
            )

    def leftovers() -> list[str]:
        with sqlite3.connect(path) as connection:
            rows = connection.execute(
                "SELECT DISTINCT object_key FROM chunks WHERE object_key LIKE 'tmp:%'"
            ).fetchall()
        return [row[0] for row in rows]

    return StoreCase("sqlite", store, corrupt, leftovers, [])


def _s3_case(client: Any, bucket: str) -> StoreCase:
    store = S3ArtifactStore(client, bucket, prefix="cas", part_bytes=PART_BYTES)
    calls: list[str] = []

    def count_call(model: Any, **_: Any) -> None:
        calls.append(model.name)

    client.meta.events.register("before-call.s3", count_call)

    def corrupt(digest: str) -> None:
        key = store.key_of(digest)
        data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        client.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    def leftovers() -> list[str]:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        staged = client.list_objects_v2(Bucket=bucket, Prefix="cas/tmp/").get("Contents", [])
        return [u["Key"] for u in uploads] + [o["Key"] for o in staged]

    return StoreCase("s3", store, corrupt, leftovers, calls)


@pytest.fixture(params=["file", "sqlite", "s3"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> StoreCase:
    if request.param == "file":
        return _file_case(tmp_path)
    if request.param == "sqlite":
        return _sqlite_case(tmp_path)
    client = request.getfixturevalue("s3_client")
    return _s3_case(client, request.getfixturevalue("s3_bucket"))


def _chunks(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


def _read_all(store: ArtifactStore, digest: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join(store.read(digest, start, end))


def _payload(size: int, seed: int = 0) -> bytes:
    # Incompressible and different per seed, without a slow random generator.
    block = hashlib.sha256(f"foxctl-{seed}".encode()).digest() * (MIB // 32)
    return (block * (size // len(block) + 1))[:size]


def _uploads(calls: list[str]) -> list[str]:
    return [name for name in calls if name in UPLOAD_OPERATIONS]


def test_put_small_object_round_trips(case: StoreCase) -> None:
    data = b"hello, artifacts\n"

    result = put_object(case.store, [data])

    assert result.digest == digest_of(data)
    assert result.size_bytes == len(data)
    assert result.created is True
    assert _read_all(case.store, result.digest) == data
    assert case.store.exists(result.digest)
    assert case.store.size(result.digest) == len(data)


def test_put_empty_object(case: StoreCase) -> None:
    result = put_object(case.store, [])

    assert result.digest == digest_of(b"")
    assert result.size_bytes == 0
    assert _read_all(case.store, result.digest) == b""


def test_large_object_stored_twice_uploads_once(case: StoreCase) -> None:
    data = _payload(20 * MIB)

    first = put_object(case.store, _chunks(data))
    uploads_after_first = _uploads(case.calls)
    case.calls.clear()
    second = put_object(case.store, _chunks(data))

    assert first.created is True
    assert second.created is False
    assert second.digest == first.digest == digest_of(data)
    assert list(case.store.list_digests()) == [first.digest]
    assert _read_all(case.store, first.digest) == data
    assert case.leftovers() == []
    if case.name == "s3":
        # 20 MB in 5 MB parts: a multipart upload of four parts, then the move.
        assert uploads_after_first.count("UploadPart") == 4
        assert _uploads(case.calls) == []


def test_one_byte_different_copy_gets_new_digest(case: StoreCase) -> None:
    data = _payload(6 * MIB)
    changed = bytearray(data)
    changed[3 * MIB] ^= 0x01

    first = put_object(case.store, _chunks(data))
    second = put_object(case.store, _chunks(bytes(changed)))

    assert second.digest != first.digest
    assert second.created is True
    assert sorted(case.store.list_digests()) == sorted([first.digest, second.digest])
    assert _read_all(case.store, second.digest) == bytes(changed)


def test_interrupted_upload_leaves_nothing(case: StoreCase) -> None:
    def broken_stream() -> Iterator[bytes]:
        yield from _chunks(_payload(12 * MIB))
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        put_object(case.store, broken_stream())

    assert list(case.store.list_digests()) == []
    assert case.leftovers() == []


def test_corrupted_object_fails_full_read(case: StoreCase) -> None:
    data = _payload(3 * MIB + 5)
    digest = put_object(case.store, _chunks(data)).digest
    case.corrupt(digest)
    received = bytearray()

    with pytest.raises(DigestMismatch):
        for chunk in case.store.read(digest):
            received += chunk

    # The last chunk is held back until the digest is checked.
    assert len(received) < len(data)


def test_range_read_is_not_verified(case: StoreCase) -> None:
    data = _payload(2 * MIB)
    digest = put_object(case.store, _chunks(data)).digest
    case.corrupt(digest)

    head = _read_all(case.store, digest, 0, 100)

    assert head == data[:100]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 1),
        (0, 10),
        (1, None),
        (MIB - 1, MIB + 1),
        (MIB, 2 * MIB),
        (3 * MIB - 10, None),
        (5, 3 * MIB + 1000),
    ],
)
def test_range_read_returns_slice(case: StoreCase, start: int, end: int | None) -> None:
    data = _payload(3 * MIB + 17)
    digest = put_object(case.store, _chunks(data)).digest

    piece = _read_all(case.store, digest, start, end)

    assert piece == data[start:end]


@pytest.mark.parametrize(("start", "end"), [(-1, None), (10, 10), (10, 5), (100, None), (100, 200)])
def test_invalid_range_raises(case: StoreCase, start: int, end: int | None) -> None:
    digest = put_object(case.store, [b"x" * 100]).digest

    with pytest.raises(InvalidRange):
        case.store.read(digest, start, end)


def test_missing_digest(case: StoreCase) -> None:
    missing = digest_of(b"never stored")

    assert case.store.exists(missing) is False
    assert case.store.delete(missing) is False
    with pytest.raises(ArtifactNotFound):
        case.store.read(missing)
    with pytest.raises(ArtifactNotFound):
        case.store.read(missing, 0, 10)
    with pytest.raises(ArtifactNotFound):
        case.store.size(missing)
    with pytest.raises(ArtifactNotFound):
        case.store.stat(missing)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha256:",
        "sha256:abc",
        "md5:" + "0" * 32,
        "sha256:" + "A" * 64,
        "sha256:" + "0" * 63 + "g",
        "0" * 64,
        "sha256:" + "0" * 64 + "/../x",
    ],
)
def test_invalid_digest_raises(case: StoreCase, value: str) -> None:
    with pytest.raises(InvalidDigest):
        case.store.read(value)
    with pytest.raises(InvalidDigest):
        case.store.exists(value)
    with pytest.raises(InvalidDigest):
        case.store.size(value)
    with pytest.raises(InvalidDigest):
        case.store.delete(value)
    with pytest.raises(InvalidDigest):
        case.store.stat(value)


def test_delete_removes_object(case: StoreCase) -> None:
    kept = put_object(case.store, [b"kept"]).digest
    removed = put_object(case.store, [b"removed"]).digest

    assert case.store.delete(removed) is True

    assert case.store.exists(removed) is False
    assert list(case.store.list_digests()) == [kept]
    with pytest.raises(ArtifactNotFound):
        case.store.read(removed)


def test_discard_leaves_nothing(case: StoreCase) -> None:
    staged = case.store.stage(_chunks(_payload(6 * MIB)))

    case.store.discard(staged)

    assert case.store.exists(staged.digest) is False
    assert case.leftovers() == []


def test_commit_after_delete_stores_again(case: StoreCase) -> None:
    data = _payload(MIB)
    digest = put_object(case.store, [data]).digest
    staged = case.store.stage([data])
    case.store.delete(digest)

    created = case.store.commit(staged)

    assert created is True
    assert _read_all(case.store, digest) == data
    assert case.leftovers() == []


def test_list_objects_in_batches(case: StoreCase) -> None:
    digests = {put_object(case.store, [f"object {n}".encode()]).digest for n in range(5)}

    batches = list(case.store.list_objects(batch_size=2))

    assert [len(batch) for batch in batches] == [2, 2, 1]
    listed = [stored.digest for batch in batches for stored in batch]
    assert sorted(listed) == sorted(digests)


def test_list_objects_reports_size_and_time(case: StoreCase) -> None:
    # S3 reports LastModified in whole seconds, and Linux stamps files from a coarse
    # clock that can lag datetime.now() by up to one timer tick.
    before = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    data = _payload(MIB + 3)
    digest = put_object(case.store, _chunks(data)).digest
    after = datetime.now(UTC)

    (batch,) = list(case.store.list_objects())
    (stored,) = batch

    assert stored.digest == digest
    assert stored.size_bytes == len(data)
    assert before <= stored.stored_at <= after
    assert stored.stored_at.utcoffset() == timedelta(0)
    assert case.store.stat(digest) == stored


def test_list_objects_of_empty_store(case: StoreCase) -> None:
    assert list(case.store.list_objects()) == []


def test_list_objects_skips_staged_copy(case: StoreCase) -> None:
    staged = case.store.stage([b"not committed yet"])

    listed = list(case.store.list_objects())

    case.store.discard(staged)
    assert listed == []


def test_commit_again_keeps_stored_at(case: StoreCase) -> None:
    digest = put_object(case.store, [b"stored twice"]).digest
    first = case.store.stat(digest)

    again = put_object(case.store, [b"stored twice"])

    assert again.created is False
    assert case.store.stat(digest) == first


def test_list_objects_rejects_zero_batch_size(case: StoreCase) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        list(case.store.list_objects(batch_size=0))


def test_file_store_stored_at_is_commit_time(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path / "cas")
    staged = store.stage([b"staged long ago"])
    os.utime(staged.handle, (0, 0))
    before = datetime.now(UTC) - timedelta(seconds=1)

    store.commit(staged)

    assert store.stat(staged.digest).stored_at >= before


def test_file_store_listing_skips_stray_names(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path / "cas")
    digest = put_object(store, [b"real"]).digest
    (store.path_of(digest).parent / "notes.txt").write_text("not an object")
    (tmp_path / "cas" / "sha256" / "README").write_text("not a fan-out directory")

    listed = [stored.digest for batch in store.list_objects() for stored in batch]

    assert listed == [digest]
    assert list(store.list_digests()) == [digest]


def test_s3_failed_part_aborts_multipart_upload(s3_client: Any, s3_bucket: str) -> None:
    case = _s3_case(s3_client, s3_bucket)
    parts_sent: list[int] = []

    def fail_second_part(params: dict[str, Any], **_: Any) -> None:
        parts_sent.append(params["PartNumber"])
        if len(parts_sent) == 2:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    s3_client.meta.events.register("before-parameter-build.s3.UploadPart", fail_second_part)

    with pytest.raises(ArtifactStoreUnavailable) as raised:
        put_object(case.store, _chunks(_payload(12 * MIB)))

    assert isinstance(raised.value.__cause__, EndpointConnectionError)
    assert "AbortMultipartUpload" in case.calls
    assert case.leftovers() == []
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0


def test_s3_missing_bucket_is_unavailable(s3_client: Any) -> None:
    store = S3ArtifactStore(s3_client, "foxctl-test-no-such-bucket")

    with pytest.raises(ArtifactStoreUnavailable):
        put_object(store, [b"data"])


def test_file_store_reports_disk_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "cas"
    blocker.write_text("a file where the store's directory should be")
    store = FileArtifactStore(blocker)

    with pytest.raises(ArtifactStoreUnavailable) as raised:
        put_object(store, [b"data"])

    assert isinstance(raised.value.__cause__, OSError)


@pytest.mark.parametrize(
    ("driver", "kind"),
    [("file", FileArtifactStore), ("sqlite", SqliteArtifactStore), ("s3", S3ArtifactStore)],
)
def test_make_artifact_store_follows_driver(
    tmp_path: Path, s3_client: Any, s3_bucket: str, driver: str, kind: type
) -> None:
    settings = load_settings(
        {
            "FOXCTL_STORAGE_ROOT": str(tmp_path),
            "FOXCTL_CAS_DRIVER": driver,
            "FOXCTL_CAS_S3_BUCKET": s3_bucket,
        }
    )

    store = make_artifact_store(settings, s3_client=s3_client)

    assert isinstance(store, TracedArtifactStore)
    assert isinstance(store.inner, kind)
    digest = put_object(store, [b"via settings"]).digest
    assert _read_all(store, digest) == b"via settings"
    if driver == "file":
        assert os.path.isdir(tmp_path / "cas" / "sha256")
    if driver == "sqlite":
        assert (tmp_path / "cas.db").exists()
