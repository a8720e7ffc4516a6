"""Artifact metadata, references and garbage collection on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from shared.agents.models import AgentCreate, AgentRole
from shared.agents.service import create_agent
from shared.cas.digests import digest_of
from shared.cas.errors import (
    ArtifactNotFound,
    ArtifactStoreUnavailable,
    InvalidDigest,
    InvalidMediaType,
)
from shared.cas.gc import GcReport, collect_garbage
from shared.cas.models import OwnerKind
from shared.cas.service import (
    StoredArtifact,
    add_reference,
    count_references,
    get_artifact,
    list_artifacts,
    pin_artifact,
    release_session_references,
    remove_reference,
    store_upload,
    unpin_artifact,
)
from shared.cas.stores import FileArtifactStore
from shared.clock import utcnow
from shared.db import Database
from shared.errors import InvalidInputError
from shared.sessions.models import SessionCreate
from shared.sessions.service import create_session, delete_session

DAY_S = 24 * 3600.0


@pytest.fixture
def store(tmp_path: Path) -> FileArtifactStore:
    return FileArtifactStore(tmp_path / "cas")


def _upload(
    database: Database, store: Any, data: bytes, *, age_s: float = 0.0, media_type: str = ""
) -> StoredArtifact:
    now = utcnow() - timedelta(seconds=age_s)
    with database.write() as db:
        return store_upload(
            db, store, [data], media_type=media_type or "application/octet-stream", now=now
        )


def _gc(database: Database, store: Any, **options: Any) -> GcReport:
    options.setdefault("older_than_s", DAY_S)
    return collect_garbage(database, store, **options)


def _new_session(database: Database) -> str:
    with database.write() as db:
        create_agent(db, AgentCreate(name="archivist", role=AgentRole.researcher))
    with database.write() as db:
        return create_session(db, SessionCreate(agent_id="archivist")).id


def test_upload_records_metadata(database: Database, store: FileArtifactStore) -> None:
    stored = _upload(database, store, b"report", media_type="text/plain; charset=utf-8")

    with database.read() as db:
        artifact = get_artifact(db, digest_of(b"report"))
    assert stored.created is True
    assert artifact.size_bytes == 6
    assert artifact.media_type == "text/plain; charset=utf-8"
    assert artifact.pinned is False
    assert artifact.created_at == artifact.last_put_at
    assert store.exists(artifact.digest)


def test_upload_again_moves_last_put_at(database: Database, store: FileArtifactStore) -> None:
    first = _upload(database, store, b"twice", age_s=DAY_S)

    second = _upload(database, store, b"twice")

    assert second.created is False
    assert second.artifact.created_at == first.artifact.created_at
    assert second.artifact.last_put_at > first.artifact.last_put_at


def test_upload_rejects_bad_media_type(database: Database, store: FileArtifactStore) -> None:
    with pytest.raises(InvalidMediaType), database.write() as db:
        store_upload(db, store, [b"x"], media_type="not a media type")

    assert list(store.list_digests()) == []


def test_get_missing_artifact(database: Database) -> None:
    with pytest.raises(ArtifactNotFound), database.read() as db:
        get_artifact(db, digest_of(b"missing"))
    with pytest.raises(InvalidDigest), database.read() as db:
        get_artifact(db, "sha256:nope")


def test_list_artifacts_pages_by_cursor(database: Database, store: FileArtifactStore) -> None:
    digests = sorted(_upload(database, store, bytes([n])).artifact.digest for n in range(5))

    with database.read() as db:
        first = list_artifacts(db, limit=2)
        second = list_artifacts(db, limit=2, cursor=first.next_cursor)
        third = list_artifacts(db, limit=2, cursor=second.next_cursor)

    assert [item.digest for item in first.items] == digests[0:2]
    assert [item.digest for item in second.items] == digests[2:4]
    assert [item.digest for item in third.items] == digests[4:5]
    assert third.next_cursor is None


def test_list_artifacts_rejects_bad_limit(database: Database) -> None:
    with pytest.raises(InvalidInputError), database.read() as db:
        list_artifacts(db, limit=0)


def test_pin_and_unpin(database: Database, store: FileArtifactStore) -> None:
    digest = _upload(database, store, b"pin me").artifact.digest

    with database.write() as db:
        pinned = pin_artifact(db, digest).pinned
    with database.write() as db:
        unpinned = unpin_artifact(db, digest).pinned

    assert pinned is True
    assert unpinned is False
    with pytest.raises(ArtifactNotFound), database.write() as db:
        pin_artifact(db, digest_of(b"missing"))


def test_references_add_and_remove(database: Database, store: FileArtifactStore) -> None:
    digest = _upload(database, store, b"shared").artifact.digest

    with database.write() as db:
        added = add_reference(db, digest, OwnerKind.message, "msg_1")
        again = add_reference(db, digest, "message", "msg_1")
        add_reference(db, digest, OwnerKind.turn, "turn_1")
    with database.write() as db:
        removed = remove_reference(db, digest, OwnerKind.message, "msg_1")
        count = count_references(db, digest)

    assert added is True
    assert again is False
    assert removed is True
    assert count == 1


def test_reference_to_missing_artifact(database: Database) -> None:
    with pytest.raises(ArtifactNotFound), database.write() as db:
        add_reference(db, digest_of(b"missing"), OwnerKind.turn, "turn_1")


def test_reference_rejects_bad_owner_kind(database: Database, store: FileArtifactStore) -> None:
    digest = _upload(database, store, b"x").artifact.digest

    with pytest.raises(InvalidInputError), database.write() as db:
        add_reference(db, digest, "agent", "agt_1")


def test_release_session_references(database: Database, store: FileArtifactStore) -> None:
    session_id = _new_session(database)
    digest = _upload(database, store, b"session output").artifact.digest
    with database.write() as db:
        add_reference(db, digest, OwnerKind.message, "msg_1", session_id=session_id)
        add_reference(db, digest, OwnerKind.session, session_id)
        add_reference(db, digest, OwnerKind.turn, "turn_other")

    with database.write() as db:
        released = release_session_references(db, session_id)
        remaining = count_references(db, digest)

    assert released == 2
    assert remaining == 1


def test_session_delete_drops_references(database: Database, store: FileArtifactStore) -> None:
    session_id = _new_session(database)
    digest = _upload(database, store, b"session output").artifact.digest
    with database.write() as db:
        add_reference(db, digest, OwnerKind.message, "msg_1", session_id=session_id)

    with database.write() as db:
        delete_session(db, session_id)

    with database.read() as db:
        assert count_references(db, digest) == 0


def test_gc_keeps_referenced_old_artifact(database: Database, store: FileArtifactStore) -> None:
    digest = _upload(database, store, b"referenced", age_s=2 * DAY_S).artifact.digest
    with database.write() as db:
        add_reference(db, digest, OwnerKind.message, "msg_1")

    report = _gc(database, store)

    assert report.deleted == 0
    assert report.kept == 1
    assert store.exists(digest)


def test_gc_keeps_pinned_old_artifact(database: Database, store: FileArtifactStore) -> None:
    digest = _upload(database, store, b"pinned", age_s=2 * DAY_S).artifact.digest
    with database.write() as db:
        pin_artifact(db, digest)

    report = _gc(database, store)

    assert report.deleted == 0
    assert store.exists(digest)


def test_gc_deletes_unreferenced_old_artifact(database: Database, store: FileArtifactStore) -> None:
    digest = _upload(database, store, b"orphan", age_s=2 * DAY_S).artifact.digest

    report = _gc(database, store)

    assert report.deleted == 1
    assert report.deleted_bytes == 6
    assert report.kept == 0
    assert store.exists(digest) is False
    with pytest.raises(ArtifactNotFound), database.read() as db:
        get_artifact(db, digest)


def test_gc_keeps_young_artifact(database: Database, store: FileArtifactStore) -> None:
    digest = _upload(database, store, b"young", age_s=3600).artifact.digest

    report = _gc(database, store)

    assert report.deleted == 0
    assert store.exists(digest)


def test_gc_after_released_reference(database: Database, store: FileArtifactStore) -> None:
    digest = _upload(database, store, b"was needed", age_s=2 * DAY_S).artifact.digest
    with database.write() as db:
        add_reference(db, digest, OwnerKind.turn, "turn_1")
    with database.write() as db:
        remove_reference(db, digest, OwnerKind.turn, "turn_1")

    report = _gc(database, store)

    assert report.deleted == 1
    assert store.exists(digest) is False


def test_gc_dry_run_deletes_nothing(database: Database, store: FileArtifactStore) -> None:
    old = [_upload(database, store, bytes([n]) * 10, age_s=2 * DAY_S) for n in range(3)]
    _upload(database, store, b"young")

    report = _gc(database, store, dry_run=True)

    assert report.dry_run is True
    assert report.deleted == 3
    assert report.deleted_bytes == 30
    assert report.kept == 1
    for stored in old:
        assert store.exists(stored.artifact.digest)
    with database.read() as db:
        assert len(list_artifacts(db).items) == 4


def test_gc_honours_max_delete(database: Database, store: FileArtifactStore) -> None:
    for n in range(5):
        _upload(database, store, bytes([n]), age_s=2 * DAY_S)

    report = _gc(database, store, max_delete=2)

    assert report.deleted == 2
    assert report.kept == 3
    assert len(list(store.list_digests())) == 3


def test_gc_cutoff_follows_now(database: Database, store: FileArtifactStore) -> None:
    _upload(database, store, b"today")

    report = _gc(database, store, now=utcnow() + timedelta(days=2))

    assert report.deleted == 1


def test_gc_counts_store_failures(database: Database, store: FileArtifactStore) -> None:
    digest = _upload(database, store, b"stuck", age_s=2 * DAY_S).artifact.digest
    failing = _PausingStore(store, "delete", fail=True)

    report = _gc(database, failing)

    assert report.failed == 1
    assert report.deleted == 0
    with database.read() as db:
        assert get_artifact(db, digest).digest == digest


class _PausingStore:
    """Delegate to a real store; one method waits for the test, or fails, when called.

    With ``after``, the method runs first and waits before it returns.
    """

    def __init__(
        self, inner: FileArtifactStore, method: str, *, fail: bool = False, after: bool = False
    ) -> None:
        self.inner = inner
        self.method = method
        self.fail = fail
        self.after = after
        self.entered = threading.Event()
        self.proceed = threading.Event()

    def __getattr__(self, name: str) -> Any:
        original = getattr(self.inner, name)
        if name != self.method:
            return original

        def paused(*args: Any, **kwargs: Any) -> Any:
            if self.fail:
                raise ArtifactStoreUnavailable("disk is gone")
            result = original(*args, **kwargs) if self.after else None
            self.entered.set()
            assert self.proceed.wait(20), "the test never let the store go on"
            return result if self.after else original(*args, **kwargs)

        return paused


class _Worker(threading.Thread):
    """Run a function in a thread and keep its result or error."""

    def __init__(self, target: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._target_function = target
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._target_function()
        except BaseException as error:
            self.error = error

    def outcome(self) -> Any:
        self.join(30)
        assert not self.is_alive(), "worker thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def _wait_until_blocked(database: Database) -> None:
    """Return once another transaction waits for a lock (PostgreSQL), or after a pause."""
    if database.dialect != "postgresql":
        # SQLite: the waiter sits in BEGIN IMMEDIATE's busy handler, which nothing
        # reports; either order leads to the same end state, which the test asserts.
        time.sleep(0.5)
        return
    deadline = time.monotonic() + 10
    with database.engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                text("SELECT count(*) FROM pg_locks WHERE NOT granted")
            ).scalar_one()
            connection.rollback()
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("no transaction started waiting for a lock")


def _old(database: Database, store: FileArtifactStore, data: bytes) -> str:
    return _upload(database, store, data, age_s=2 * DAY_S).artifact.digest


def _upload_now(database: Database, store: Any, data: bytes) -> StoredArtifact:
    with database.write() as db:
        return store_upload(db, store, [data])


def test_gc_first_then_upload_keeps_bytes(database: Database, store: FileArtifactStore) -> None:
    data = b"raced" * 1000
    digest = _old(database, store, data)
    pausing = _PausingStore(store, "delete")
    gc = _Worker(lambda: _gc(database, pausing))
    gc.start()
    assert pausing.entered.wait(10)
    upload = _Worker(lambda: _upload_now(database, store, data))
    upload.start()
    _wait_until_blocked(database)

    pausing.proceed.set()
    report = gc.outcome()
    stored = upload.outcome()

    assert report.deleted == 1
    assert stored.created is True
    assert b"".join(store.read(digest)) == data
    with database.read() as db:
        assert get_artifact(db, digest).last_put_at > utcnow() - timedelta(minutes=1)


def test_upload_first_then_gc_keeps_bytes(database: Database, store: FileArtifactStore) -> None:
    data = b"raced" * 1000
    digest = _old(database, store, data)
    pausing = _PausingStore(store, "commit")
    upload = _Worker(lambda: _upload_now(database, pausing, data))
    upload.start()
    assert pausing.entered.wait(10)
    gc = _Worker(lambda: _gc(database, store))
    gc.start()
    _wait_until_blocked(database)

    pausing.proceed.set()
    stored = upload.outcome()
    report = gc.outcome()

    assert stored.created is False
    assert report.deleted == 0
    assert b"".join(store.read(digest)) == data
    with database.read() as db:
        assert get_artifact(db, digest).digest == digest


def test_gc_waits_for_new_reference(database: Database, store: FileArtifactStore) -> None:
    digest = _old(database, store, b"about to be referenced")
    started = threading.Event()
    proceed = threading.Event()

    def reference() -> None:
        with database.write() as db:
            add_reference(db, digest, OwnerKind.message, "msg_late")
            started.set()
            assert proceed.wait(20)

    referrer = _Worker(reference)
    referrer.start()
    assert started.wait(10)
    gc = _Worker(lambda: _gc(database, store))
    gc.start()
    _wait_until_blocked(database)

    proceed.set()
    referrer.outcome()
    report = gc.outcome()

    assert report.deleted == 0
    assert store.exists(digest)


class _Rollback(Exception):
    """Raised inside a transaction to roll it back."""


def _orphan(database: Database, store: FileArtifactStore, data: bytes, *, age_s: float) -> str:
    """Upload ``data``, roll the transaction back after the bytes are published, age them."""
    with pytest.raises(_Rollback), database.write() as db:
        store_upload(db, store, [data])
        raise _Rollback
    digest = digest_of(data)
    _age_bytes(store, digest, age_s)
    return digest


def _age_bytes(store: FileArtifactStore, digest: str, age_s: float) -> None:
    stored_at = time.time() - age_s
    os.utime(store.path_of(digest), (stored_at, stored_at))


def _has_row(database: Database, digest: str) -> bool:
    with database.read() as db:
        try:
            get_artifact(db, digest)
        except ArtifactNotFound:
            return False
    return True


def test_gc_deletes_old_orphan(database: Database, store: FileArtifactStore) -> None:
    digest = _orphan(database, store, b"rolled back", age_s=2 * DAY_S)

    report = _gc(database, store)

    assert report.orphans_deleted == 1
    assert report.orphans_deleted_bytes == 11
    assert report.orphans_kept == 0
    assert report.deleted == 0
    assert store.exists(digest) is False
    assert _has_row(database, digest) is False


def test_gc_keeps_young_orphan(database: Database, store: FileArtifactStore) -> None:
    digest = _orphan(database, store, b"rolled back", age_s=3600)

    report = _gc(database, store)

    assert report.orphans_deleted == 0
    assert report.orphans_kept == 1
    assert report.orphans_kept_bytes == 11
    assert store.exists(digest)


def test_orphan_pass_spares_digests_with_rows(database: Database, store: FileArtifactStore) -> None:
    pinned = _old(database, store, b"pinned")
    referenced = _old(database, store, b"referenced")
    young = _upload(database, store, b"young row").artifact.digest
    with database.write() as db:
        pin_artifact(db, pinned)
        add_reference(db, referenced, OwnerKind.message, "msg_1")
    for digest in (pinned, referenced, young):
        _age_bytes(store, digest, 2 * DAY_S)
    orphan = _orphan(database, store, b"orphan", age_s=2 * DAY_S)

    report = _gc(database, store)

    assert report.deleted == 0
    assert report.orphans_deleted == 1
    assert store.exists(orphan) is False
    for digest in (pinned, referenced, young):
        assert store.exists(digest)
        assert _has_row(database, digest)


def test_gc_dry_run_keeps_orphans(database: Database, store: FileArtifactStore) -> None:
    old = _orphan(database, store, b"old orphan", age_s=2 * DAY_S)
    young = _orphan(database, store, b"young orphan", age_s=60)

    report = _gc(database, store, dry_run=True)

    assert report.orphans_deleted == 1
    assert report.orphans_deleted_bytes == 10
    assert report.orphans_kept == 1
    assert store.exists(old)
    assert store.exists(young)


def test_gc_max_delete_counts_orphans(database: Database, store: FileArtifactStore) -> None:
    for n in range(2):
        _old(database, store, bytes([n]))
    orphans = [_orphan(database, store, bytes([n]) * 2, age_s=2 * DAY_S) for n in range(2)]

    report = _gc(database, store, max_delete=3)

    assert report.deleted == 2
    assert report.orphans_deleted == 1
    assert sum(store.exists(digest) for digest in orphans) == 1


def test_gc_counts_orphan_store_failures(database: Database, store: FileArtifactStore) -> None:
    digest = _orphan(database, store, b"stuck orphan", age_s=2 * DAY_S)
    failing = _PausingStore(store, "delete", fail=True)

    report = _gc(database, failing)

    assert report.orphans_failed == 1
    assert report.orphans_deleted == 0
    assert store.exists(digest)
    assert _has_row(database, digest) is False


def test_gc_report_lists_orphan_counts(database: Database, store: FileArtifactStore) -> None:
    _orphan(database, store, b"rolled back", age_s=2 * DAY_S)

    report = _gc(database, store).as_dict()

    assert report["orphans_deleted"] == 1
    assert report["orphans_deleted_bytes"] == 11
    assert report["orphans_kept"] == 0
    assert report["orphans_kept_bytes"] == 0
    assert report["orphans_failed"] == 0


def test_orphan_gc_first_then_upload_keeps_bytes(
    database: Database, store: FileArtifactStore
) -> None:
    data = b"raced orphan" * 1000
    digest = _orphan(database, store, data, age_s=2 * DAY_S)
    pausing = _PausingStore(store, "delete")
    gc = _Worker(lambda: _gc(database, pausing))
    gc.start()
    assert pausing.entered.wait(10)
    upload = _Worker(lambda: _upload_now(database, store, data))
    upload.start()
    _wait_until_blocked(database)

    pausing.proceed.set()
    report = gc.outcome()
    stored = upload.outcome()

    assert report.orphans_deleted == 1
    assert stored.created is True
    assert b"".join(store.read(digest)) == data
    assert _has_row(database, digest)


def test_upload_first_then_orphan_gc_keeps_bytes(
    database: Database, store: FileArtifactStore
) -> None:
    data = b"uncommitted upload" * 1000
    digest = digest_of(data)
    # The upload publishes its bytes, then waits before its transaction commits.
    pausing = _PausingStore(store, "commit", after=True)
    upload = _Worker(lambda: _upload_now(database, pausing, data))
    upload.start()
    assert pausing.entered.wait(10)
    # With no age limit, only waiting for the upload's transaction keeps gc off the
    # published bytes.
    gc = _Worker(lambda: _gc(database, store, older_than_s=0))
    gc.start()
    _wait_until_blocked(database)

    pausing.proceed.set()
    stored = upload.outcome()
    report = gc.outcome()

    assert stored.created is True
    assert report.orphans_deleted == 0
    assert b"".join(store.read(digest)) == data
    assert _has_row(database, digest)
