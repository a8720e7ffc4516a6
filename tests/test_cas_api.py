"""The artifact store over HTTP."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from shared.db import Database
from shared.settings import Settings
from tests.harness import Harness

BLOB = b"0123456789" * 30_000


@pytest.fixture
def foxctl(settings: Settings, database: Database) -> Iterator[Harness]:
    yield Harness(settings.model_copy(update={"max_upload_bytes": 1_000_000}), database)


def upload(foxctl: Harness, data: bytes, media_type: str = "text/plain") -> dict:
    result = foxctl.call("PUT", "/api/cas", body=data, headers={"Content-Type": media_type})
    assert result.status_code in (200, 201), result.json
    return dict(result.json)


def test_upload_returns_sha256_digest(foxctl: Harness) -> None:
    result = foxctl.call("PUT", "/api/cas", body=BLOB, headers={"Content-Type": "text/plain"})

    assert result.status_code == 201
    assert result.json["digest"] == "sha256:" + hashlib.sha256(BLOB).hexdigest()
    assert result.json["size_bytes"] == len(BLOB)
    assert result.json["created"] is True


def test_second_upload_stores_nothing_new(foxctl: Harness) -> None:
    upload(foxctl, BLOB)

    again = foxctl.call("PUT", "/api/cas", body=BLOB, headers={"Content-Type": "text/plain"})

    assert again.status_code == 200
    assert again.json["created"] is False


def test_download_and_head(foxctl: Harness) -> None:
    digest = upload(foxctl, BLOB)["digest"]

    body = foxctl.call("GET", f"/api/cas/{digest}")
    head = foxctl.call("HEAD", f"/api/cas/{digest}")

    assert body.content == BLOB
    assert body.headers["content-type"] == "text/plain"
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(BLOB))
    assert head.headers["etag"] == f'"{digest}"'


@pytest.mark.parametrize(
    ("header", "expected", "content_range"),
    [
        ("bytes=0-9", BLOB[:10], "bytes 0-9/300000"),
        ("bytes=299995-", BLOB[-5:], "bytes 299995-299999/300000"),
        ("bytes=-3", BLOB[-3:], "bytes 299997-299999/300000"),
        ("bytes=10-999999", BLOB[10:], "bytes 10-299999/300000"),
    ],
)
def test_range_requests(foxctl: Harness, header: str, expected: bytes, content_range: str) -> None:
    digest = upload(foxctl, BLOB)["digest"]

    result = foxctl.call("GET", f"/api/cas/{digest}", headers={"Range": header})

    assert result.status_code == 206
    assert result.content == expected
    assert result.headers["content-range"] == content_range


@pytest.mark.parametrize("header", ["bytes=300000-", "bytes=5-2", "items=0-1", "bytes=-0"])
def test_unsatisfiable_range_gets_416(foxctl: Harness, header: str) -> None:
    digest = upload(foxctl, BLOB)["digest"]

    result = foxctl.call("GET", f"/api/cas/{digest}", headers={"Range": header})

    assert result.status_code == 416
    assert result.headers["content-range"] == "bytes */300000"


def test_missing_and_invalid_digests(foxctl: Harness) -> None:
    missing = foxctl.call("GET", "/api/cas/sha256:" + "0" * 64)
    invalid = foxctl.call("GET", "/api/cas/md5:abc")

    assert missing.status_code == 404
    assert missing.json["error"]["code"] == "artifact_not_found"
    assert invalid.status_code == 422


def test_pin_unpin_and_list(foxctl: Harness) -> None:
    digest = upload(foxctl, BLOB)["digest"]

    pinned = foxctl.call("POST", f"/api/cas/{digest}/pin")
    listed = foxctl.call("GET", "/api/cas", params={"limit": 10})
    unpinned = foxctl.call("POST", f"/api/cas/{digest}/unpin")

    assert pinned.json["pinned"] is True
    assert [a["digest"] for a in listed.json["items"]] == [digest]
    assert unpinned.json["pinned"] is False


def test_upload_over_limit_gets_413_and_stores_nothing(foxctl: Harness) -> None:
    result = foxctl.call(
        "PUT",
        "/api/cas",
        body=b"x" * 1_000_001,
        headers={"Content-Type": "application/octet-stream"},
    )

    assert result.status_code == 413
    assert foxctl.call("GET", "/api/cas").json["items"] == []
    assert list(foxctl.artifacts.list_digests()) == []


def test_bad_media_type_gets_422(foxctl: Harness) -> None:
    result = foxctl.call("PUT", "/api/cas", body=b"x", headers={"Content-Type": "not a type"})

    assert result.status_code == 422


def test_upload_needs_token(foxctl: Harness) -> None:
    result = foxctl.client.simulate_put("/api/cas", body=b"x")

    assert result.status_code == 401


def test_cut_off_upload_is_abandoned() -> None:
    import asyncio

    from web.errors import ApiError
    from web.resources.cas import _feed

    class CutOffStream:
        def __init__(self) -> None:
            self.parts = [b"x" * 1000]

        async def read(self, size: int) -> bytes:
            return self.parts.pop() if self.parts else b""

    class Request:
        stream = CutOffStream()

    async def feed() -> list[object]:
        chunks: asyncio.Queue[object] = asyncio.Queue()
        with pytest.raises(ApiError) as caught:
            await _feed(Request(), chunks, 5000)  # type: ignore[arg-type]
        assert caught.value.error_code == "upload_incomplete"
        return [chunks.get_nowait() for _ in range(chunks.qsize())]

    queued = asyncio.run(feed())

    assert queued == [b"x" * 1000]
