"""RedisDedup on the live Redis: keys with a TTL, shared by stores, a clear error when down."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from dispytch import ConnectError
from dispytch.redis import RedisDedup
from tests.helpers import require_broker

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(autouse=True)
def _redis() -> None:
    require_broker("redis_streams", 6379)


async def test_records_with_a_ttl_and_is_shared_between_stores() -> None:
    prefix = f"test:dedup:{uuid.uuid4().hex}:"
    one = RedisDedup(URL, ttl=120, prefix=prefix)
    two = RedisDedup(URL, ttl=120, prefix=prefix)
    client = Redis.from_url(URL)
    try:
        assert not await one.seen("g:h:evt-1")
        await one.record("g:h:evt-1")
        assert await two.seen("g:h:evt-1")  # another process would see it too
        ttl = await client.pttl(prefix + "g:h:evt-1")
        assert 100_000 < ttl <= 120_000
        await one.close()
        assert await one.seen("g:h:evt-1")  # reconnects after close
    finally:
        await client.delete(prefix + "g:h:evt-1")
        await client.aclose()
        await one.close()
        await two.close()


async def test_repr_hides_the_password_and_a_dead_server_fails_loudly() -> None:
    store = RedisDedup("redis://:s3cret@127.0.0.1:1/0", connect_timeout=0.5)
    assert "s3cret" not in repr(store)
    with pytest.raises(ConnectError) as raised:
        await store.seen("k")
    assert "s3cret" not in str(raised.value)
    await store.close()
