"""Live events over Redis pub/sub, against the real Redis server."""

from __future__ import annotations

import asyncio

import redis.connection

from shared.events.redis_live import RedisEventHub, RedisPublisher, channel_for


def other_database(redis_url: str) -> str:
    parsed = redis.connection.parse_url(redis_url)
    db = int(parsed.get("db", 0))
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    return f"{base}/{14 if db != 14 else 13}"


def test_channel_names_carry_the_database_number() -> None:
    assert channel_for("redis://127.0.0.1:6379/3", "ses_1") == "foxctl:3:events:ses_1"
    assert channel_for("redis://127.0.0.1:6379", "ses_1") == "foxctl:0:events:ses_1"


def test_hub_gets_events_of_its_own_database_only(redis_url: str) -> None:
    # Pub/sub channels are shared by every database of a Redis server; two deployments
    # on different databases must not see each other's events.
    other_url = other_database(redis_url)

    async def scenario() -> tuple[dict[str, object], bool]:
        own_hub, other_hub = RedisEventHub(redis_url), RedisEventHub(other_url)
        await own_hub.start()
        await other_hub.start()
        own = own_hub.subscribe("ses_shared", 10)
        other = other_hub.subscribe("ses_shared", 10)
        publisher = RedisPublisher(redis_url)
        try:
            publisher.publish("ses_shared", {"type": "turn.delta", "text": "hello"})
            received = await asyncio.wait_for(own.get(), timeout=5)
            try:
                await asyncio.wait_for(other.get(), timeout=0.5)
                leaked = True
            except TimeoutError:
                leaked = False
            return received, leaked
        finally:
            publisher.close()
            await own_hub.stop()
            await other_hub.stop()

    received, leaked = asyncio.run(scenario())
    assert received == {"type": "turn.delta", "text": "hello"}
    assert leaked is False
