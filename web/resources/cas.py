"""The content-addressed store over HTTP: upload, download with ranges, list, pin.

Store I/O is synchronous, so bytes cross between the event loop and the thread pool
through small bounded queues: neither side holds a whole object in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import falcon
import falcon.asgi

from shared.cas import service
from shared.cas.models import DEFAULT_MEDIA_TYPE, Artifact, ArtifactOut
from shared.cas.stores.base import ArtifactStore
from web.context import WebContext
from web.errors import ApiError
from web.http import page_limit

#: Bytes read from the request body per step.
UPLOAD_CHUNK_BYTES = 256 * 1024
#: Chunks in flight between the event loop and the upload thread.
QUEUE_CHUNKS = 4
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class ArtifactsResource:
    def __init__(self, ctx: WebContext, store: ArtifactStore) -> None:
        self._ctx = ctx
        self._store = store

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        limit = page_limit(req)
        cursor = req.get_param("cursor")

        def list_page() -> object:
            with self._ctx.db.read() as db:
                return service.list_artifacts(db, limit=limit, cursor=cursor).model_dump(
                    mode="json"
                )

        resp.media = await self._ctx.run(list_page)

    async def on_put(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        media_type = req.content_type or DEFAULT_MEDIA_TYPE
        service.check_media_type(media_type)
        declared = _declared_length(req, self._ctx.settings.max_upload_bytes)
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(QUEUE_CHUNKS)

        def upload() -> service.StoredArtifact:
            with self._ctx.db.write() as db:
                return service.store_upload(
                    db, self._store, _from_queue(chunks, loop), media_type=media_type
                )

        pending = loop.run_in_executor(self._ctx.executor, upload)
        try:
            await _feed(req, chunks, declared)
        except BaseException as error:
            # The upload thread sees the error, the store discards what it staged, and
            # the thread ends before this request does.
            await chunks.put(error)
            with contextlib.suppress(BaseException):
                await pending
            raise
        stored = await pending
        resp.status = falcon.HTTP_201 if stored.created else falcon.HTTP_200
        resp.media = {**_describe(stored.artifact), "created": stored.created}


class ArtifactResource:
    def __init__(self, ctx: WebContext, store: ArtifactStore) -> None:
        self._ctx = ctx
        self._store = store

    async def on_head(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, digest: str
    ) -> None:
        artifact = await self._metadata(digest)
        _set_headers(resp, artifact)
        resp.content_length = artifact.size_bytes

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, digest: str
    ) -> None:
        artifact = await self._metadata(digest)
        _set_headers(resp, artifact)
        start, end = _parse_range(req.get_header("Range"), artifact.size_bytes)
        if start == 0 and end is None:
            resp.content_length = artifact.size_bytes
            reader = self._store.read(artifact.digest)
        else:
            stop = artifact.size_bytes if end is None else end
            resp.status = falcon.HTTP_206
            resp.set_header("Content-Range", f"bytes {start}-{stop - 1}/{artifact.size_bytes}")
            resp.content_length = stop - start
            reader = self._store.read(artifact.digest, start, stop)
        # The first chunk is read here so that a missing object is a clean error
        # response instead of a broken stream.
        first = await self._ctx.run(lambda: next(reader, b""))
        resp.stream = _to_async(first, reader, self._ctx)

    async def _metadata(self, digest: str) -> Artifact:
        def get() -> Artifact:
            with self._ctx.db.read() as db:
                return service.get_artifact(db, digest)

        return await self._ctx.run(get)


class ArtifactPinResource:
    def __init__(self, ctx: WebContext, *, pinned: bool) -> None:
        self._ctx = ctx
        self._pinned = pinned

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, digest: str
    ) -> None:
        change = service.pin_artifact if self._pinned else service.unpin_artifact

        def apply() -> object:
            with self._ctx.db.write() as db:
                return _describe(change(db, digest))

        resp.media = await self._ctx.run(apply)


def _declared_length(req: falcon.asgi.Request, limit_bytes: int) -> int:
    """Return the upload's Content-Length; a body without one cannot be checked whole."""
    if req.content_length is None:
        raise ApiError(
            falcon.HTTP_411,
            "length_required",
            "uploads need a Content-Length header, so that a cut-off upload is not stored",
        )
    if req.content_length > limit_bytes:
        raise ApiError(
            falcon.HTTP_413,
            "upload_too_large",
            f"upload of {req.content_length} bytes is larger than the limit of "
            f"{limit_bytes} bytes (FOXCTL_MAX_UPLOAD_BYTES)",
            details={"limit_bytes": limit_bytes},
        )
    return req.content_length


class UploadCutOff(Exception):
    """The body ended before its Content-Length; nothing of it is stored."""


async def _feed(
    req: falcon.asgi.Request,
    chunks: asyncio.Queue[bytes | BaseException | None],
    declared_bytes: int,
) -> None:
    received = 0
    while received < declared_bytes:
        data = await req.stream.read(min(UPLOAD_CHUNK_BYTES, declared_bytes - received))
        if not data:
            raise ApiError(
                falcon.HTTP_400,
                "upload_incomplete",
                f"the upload ended after {received} of {declared_bytes} bytes; send it again",
            )
        received += len(data)
        await chunks.put(data)
    await chunks.put(None)


def _from_queue(
    chunks: asyncio.Queue[bytes | BaseException | None], loop: asyncio.AbstractEventLoop
) -> Iterator[bytes]:
    while True:
        chunk = asyncio.run_coroutine_threadsafe(chunks.get(), loop).result()
        if chunk is None:
            return
        if isinstance(chunk, BaseException):
            raise UploadCutOff("the upload was abandoned") from chunk
        yield chunk


async def _to_async(first: bytes, reader: Iterator[bytes], ctx: WebContext) -> AsyncIterator[bytes]:
    if first:
        yield first
    while True:
        chunk = await ctx.run(lambda: next(reader, b""))
        if not chunk:
            return
        yield chunk


def _parse_range(header: str | None, size_bytes: int) -> tuple[int, int | None]:
    """Turn one ``bytes=`` range into (start, exclusive end); raise 416 when unusable."""
    if header is None:
        return 0, None
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise _unsatisfiable(header, size_bytes)
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0:
            raise _unsatisfiable(header, size_bytes)
        return max(size_bytes - suffix, 0), None
    start = int(first)
    end = min(int(last) + 1, size_bytes) if last else None
    if start >= size_bytes or (end is not None and end <= start):
        raise _unsatisfiable(header, size_bytes)
    return start, end


def _unsatisfiable(header: str, size_bytes: int) -> ApiError:
    return ApiError(
        falcon.HTTP_416,
        "range_not_satisfiable",
        f"range {header!r} does not fit an object of {size_bytes} bytes; send one range "
        "such as bytes=0-1023",
        headers={"Content-Range": f"bytes */{size_bytes}"},
    )


def _set_headers(resp: falcon.asgi.Response, artifact: Artifact) -> None:
    resp.content_type = artifact.media_type
    resp.set_header("ETag", f'"{artifact.digest}"')
    resp.set_header("Accept-Ranges", "bytes")
    resp.set_header("Cache-Control", "private, max-age=31536000, immutable")
    resp.set_header("X-Foxctl-Pinned", "true" if artifact.pinned else "false")


def _describe(artifact: Artifact) -> dict[str, Any]:
    return ArtifactOut.of(artifact).model_dump(mode="json")
