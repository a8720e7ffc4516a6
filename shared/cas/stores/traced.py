"""A store wrapper that adds a span per call and counts the bytes moved."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from shared import telemetry
from shared.cas.stores.base import LIST_BATCH_SIZE, ArtifactStore, StagedObject, StoredObject
from shared.metrics import CAS_BYTES


class TracedArtifactStore:
    """Delegate to ``inner``; each call gets a ``cas <operation>`` span.

    ``foxctl_cas_bytes`` counts bytes staged (``in``) and bytes read (``out``).
    """

    def __init__(self, inner: ArtifactStore, driver: str) -> None:
        self.inner = inner
        self._driver = driver

    def stage(self, chunks: Iterable[bytes]) -> StagedObject:
        with telemetry.span("cas stage", {"foxctl.cas.driver": self._driver}) as current:
            staged = self.inner.stage(chunks)
            current.set_attribute("foxctl.cas.size_bytes", staged.size_bytes)
        CAS_BYTES.labels("in").inc(staged.size_bytes)
        return staged

    def commit(self, staged: StagedObject) -> bool:
        with telemetry.span("cas commit", self._attributes(staged.digest)):
            return self.inner.commit(staged)

    def discard(self, staged: StagedObject) -> None:
        with telemetry.span("cas discard", self._attributes(staged.digest)):
            self.inner.discard(staged)

    def read(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        # The span covers the lookup; the bytes stream later, at the caller's pace.
        with telemetry.span("cas read", self._attributes(digest)):
            chunks = self.inner.read(digest, start, end)
        return _counted(chunks)

    def exists(self, digest: str) -> bool:
        with telemetry.span("cas exists", self._attributes(digest)):
            return self.inner.exists(digest)

    def size(self, digest: str) -> int:
        with telemetry.span("cas size", self._attributes(digest)):
            return self.inner.size(digest)

    def delete(self, digest: str) -> bool:
        with telemetry.span("cas delete", self._attributes(digest)):
            return self.inner.delete(digest)

    def stat(self, digest: str) -> StoredObject:
        with telemetry.span("cas stat", self._attributes(digest)):
            return self.inner.stat(digest)

    def list_digests(self) -> Iterator[str]:
        return self.inner.list_digests()

    def list_objects(self, batch_size: int = LIST_BATCH_SIZE) -> Iterator[list[StoredObject]]:
        return self.inner.list_objects(batch_size)

    def _attributes(self, digest: str) -> dict[str, str]:
        return {"foxctl.cas.driver": self._driver, "foxctl.cas.digest": digest}


def _counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        CAS_BYTES.labels("out").inc(len(chunk))
        yield chunk
