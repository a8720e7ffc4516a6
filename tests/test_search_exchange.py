"""The search exchange between web processes and workers, on Redis and in memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from shared.retrieval.exchange import (
    MemorySearchExchange,
    RedisSearchExchange,
    SearchExchange,
    SearchTimeout,
    key_prefix,
)


@pytest.fixture(params=["redis", "memory"])
def exchange(request: pytest.FixtureRequest) -> Iterator[SearchExchange]:
    if request.param == "redis":
        created: SearchExchange = RedisSearchExchange(request.getfixturevalue("redis_url"))
    else:
        created = MemorySearchExchange()
    yield created
    asyncio.run(created.close())


def wait_once(exchange: SearchExchange, request_id: str, timeout_s: float) -> dict[str, object]:
    """Wait on a new event loop and close the exchange's connections on that loop."""

    async def run() -> dict[str, object]:
        try:
            return await exchange.wait(request_id, timeout_s)
        finally:
            await exchange.close()

    return asyncio.run(run())


def later(delay_s: float, action: Callable[[], None]) -> asyncio.Task[None]:
    async def run() -> None:
        await asyncio.sleep(delay_s)
        await asyncio.to_thread(action)

    return asyncio.get_running_loop().create_task(run())


def test_worker_response_reaches_web(exchange: SearchExchange) -> None:
    request = {"q": "retry backoff", "limit": 5, "path_prefix": None, "rerank": None}
    request_id = exchange.submit(request, ttl_s=5)

    async def web_and_worker() -> dict[str, object]:
        def worker() -> None:
            stored = exchange.take(request_id)
            assert stored == request
            exchange.respond(request_id, {"results": {"query": stored["q"]}})

        task = later(0.1, worker)
        try:
            response = await exchange.wait(request_id, 5)
            # The worker's pipeline may still be reading its reply: close after it ends.
            await task
        finally:
            await exchange.close()
        return response

    assert asyncio.run(web_and_worker()) == {"results": {"query": "retry backoff"}}
    # Taken once: a redelivered message finds nothing to run.
    assert exchange.take(request_id) is None


def test_early_response_is_kept(exchange: SearchExchange) -> None:
    request_id = exchange.submit({"q": "x"}, ttl_s=5)
    assert exchange.take(request_id) == {"q": "x"}
    exchange.respond(request_id, {"error": {"code": "error", "message": "m"}})

    response = wait_once(exchange, request_id, 1)

    assert response == {"error": {"code": "error", "message": "m"}}


def test_wait_times_out_and_the_request_is_dropped(exchange: SearchExchange) -> None:
    request_id = exchange.submit({"q": "x"}, ttl_s=5)
    started = time.monotonic()

    with pytest.raises(SearchTimeout):
        wait_once(exchange, request_id, 0.2)

    assert time.monotonic() - started >= 0.2
    # The web fell back to full text; a worker that comes later does no work.
    assert exchange.take(request_id) is None


def test_request_expires_after_its_ttl(exchange: SearchExchange) -> None:
    request_id = exchange.submit({"q": "x"}, ttl_s=0.1)
    time.sleep(0.25)

    assert exchange.take(request_id) is None


def test_redis_keys_carry_the_database_number(redis_url: str) -> None:
    exchange = RedisSearchExchange(redis_url)
    client = redis.Redis.from_url(redis_url)
    db = redis.connection.parse_url(redis_url).get("db", 0)  # type: ignore[no-untyped-call]
    try:
        request_id = exchange.submit({"q": "x"}, ttl_s=5)
        exchange.take(request_id)
        exchange.respond(request_id, {"results": {}})

        keys = {key.decode() for key in client.keys(f"foxctl:{db}:search:*")}
        ttl = client.ttl(f"foxctl:{db}:search:{request_id}:response")
    finally:
        client.close()
        asyncio.run(exchange.close())

    assert key_prefix(redis_url) == f"foxctl:{db}:search:"
    assert keys == {f"foxctl:{db}:search:{request_id}:response"}
    # A response that no web process pops does not stay in Redis for good.
    assert 0 < ttl <= 60


def test_memory_discard_and_late_response() -> None:
    exchange = MemorySearchExchange()
    request_id = exchange.submit({"q": "x"}, ttl_s=5)

    with pytest.raises(SearchTimeout):
        asyncio.run(exchange.wait(request_id, 0.05))
    exchange.respond(request_id, {"results": {}})
    exchange.discard(request_id)

    assert exchange.take(request_id) is None
    assert exchange._requests == {}
    assert exchange._responses == {}
