"""The session lease: exclusion, expiry, fencing, on both drivers."""

from __future__ import annotations

import threading

import pytest

from shared.agents.models import AgentCreate, AgentRole
from shared.agents.service import create_agent
from shared.clock import ManualClock
from shared.db import Database
from shared.sessions.models import SessionCreate
from shared.sessions.service import create_session
from shared.turns.errors import LeaseLost
from shared.turns.lease import SqlTurnLock


@pytest.fixture
def session_id(database: Database) -> str:
    with database.write() as db:
        create_agent(db, AgentCreate(name="a", role=AgentRole.coder))
        return create_session(db, SessionCreate(agent_id="a")).id


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def lock(database: Database, clock: ManualClock) -> SqlTurnLock:
    return SqlTurnLock(database, ttl_s=10.0, clock=clock)


def test_claim_excludes_second_holder(lock: SqlTurnLock, session_id: str) -> None:
    first = lock.claim(session_id, "a")

    second = lock.claim(session_id, "b")

    assert first == 1
    assert second is None


def test_release_frees_lease(lock: SqlTurnLock, session_id: str) -> None:
    token = lock.claim(session_id, "a")
    assert token is not None

    lock.release(session_id, token)

    assert lock.claim(session_id, "b") == token + 1


def test_expired_lease_is_claimed_with_larger_token(
    lock: SqlTurnLock, session_id: str, clock: ManualClock
) -> None:
    lock.claim(session_id, "dead")

    clock.advance(10.5)
    token = lock.claim(session_id, "b")

    assert token == 2


def test_renew_keeps_lease_past_ttl(lock: SqlTurnLock, session_id: str, clock: ManualClock) -> None:
    token = lock.claim(session_id, "a")
    assert token is not None

    clock.advance(8)
    assert lock.renew(session_id, token)
    clock.advance(8)

    assert lock.claim(session_id, "b") is None


def test_stale_token_cannot_write(
    lock: SqlTurnLock, database: Database, session_id: str, clock: ManualClock
) -> None:
    old = lock.claim(session_id, "paused")
    assert old is not None
    clock.advance(11)
    new = lock.claim(session_id, "b")

    with pytest.raises(LeaseLost), database.write() as db:
        lock.fence(db, session_id, old)

    assert new == old + 1
    assert not lock.renew(session_id, old)


def test_stale_release_leaves_new_holder(
    lock: SqlTurnLock, session_id: str, clock: ManualClock
) -> None:
    old = lock.claim(session_id, "paused")
    assert old is not None
    clock.advance(11)
    new = lock.claim(session_id, "b")
    assert new is not None

    lock.release(session_id, old)

    assert lock.claim(session_id, "c") is None
    assert lock.renew(session_id, new)


def test_fence_after_release_fails(lock: SqlTurnLock, database: Database, session_id: str) -> None:
    token = lock.claim(session_id, "a")
    assert token is not None
    lock.release(session_id, token)

    with pytest.raises(LeaseLost), database.write() as db:
        lock.fence(db, session_id, token)


def test_concurrent_claims_have_one_winner(database: Database, session_id: str) -> None:
    lock = SqlTurnLock(database, ttl_s=30.0)
    barrier = threading.Barrier(8)
    results: list[int | None] = []

    def claim(name: str) -> None:
        barrier.wait()
        results.append(lock.claim(session_id, name))

    threads = [threading.Thread(target=claim, args=(f"h{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results, key=lambda r: r or 0) == [None] * 7 + [1]
