"""The claim store's address: parsed from RECOVERY_REDIS_URL, its password never shown."""

from __future__ import annotations

import pytest

from recovery.claim import DispatchClaims, RedisAddress


def test_an_address_is_read_from_its_url() -> None:
    assert RedisAddress.parse("redis://redis.internal") == RedisAddress("redis.internal", 6379)
    parsed = RedisAddress.parse("redis://:p%40ss@10.0.0.7:6380/2")
    assert (parsed.host, parsed.port, parsed.password, parsed.db) == ("10.0.0.7", 6380, "p@ss", 2)


def test_the_password_is_never_shown() -> None:
    address = RedisAddress.parse("redis://:hunter2@redis.internal:6379/0")
    assert "hunter2" not in repr(address)
    assert "hunter2" not in str(address)


@pytest.mark.parametrize("url", ["http://redis.internal", "redis://", "rediss:///0"])
def test_an_address_that_is_not_redis_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        RedisAddress.parse(url)


async def test_without_a_store_there_is_no_claim_to_lose() -> None:
    assert await DispatchClaims(None, ttl=10, timeout=1).claim("room:AJ_1:first") is None
