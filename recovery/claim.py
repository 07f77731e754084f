"""One watcher wins the right to dispatch for one death: an atomic claim in the cluster's Redis.

LiveKit's API has no compare-and-set (room metadata is last-writer-wins; a dispatch starts its job
the moment it is created, and deleting it only terminates that job once a worker has it), so two
watchers that both check a room within one API round trip would both dispatch. Redis, which every
livekit-server node of a cluster already shares, has one: `SET key token NX PX ttl`. The key names
the death (room, dead job, the dispatches being replaced), so the first watcher wins it and every
other one, however close behind, loses it.

A claim is only a tie-breaker, never a condition for recovery: when Redis cannot be reached (or no
URL is configured), `claim` answers `None` and the watcher dispatches as it would without it.

A minimal RESP client (three commands) rather than a client library: one short-lived connection per
claim, which happens once per death.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

logger = logging.getLogger("avatar-agent.recovery")

KEY_PREFIX = "avatar-agent:recovery-claim:"

# Deletes the key only if it still holds our token (a claim that expired and was won by another
# watcher is not ours to release).
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


class ClaimStoreError(Exception):
    """Redis answered with an error, or not in the protocol."""


# Everything that means "no answer from the store": it is then as if there were none.
_UNREACHABLE = (OSError, TimeoutError, EOFError, asyncio.LimitOverrunError, ClaimStoreError)


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    password: str | None = field(default=None, repr=False)  # never in a log
    db: int = 0

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """`redis://[:password@]host[:port][/db]`."""
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError("the claim store's URL must be redis://[:password@]host[:port][/db]")
        db = parts.path.lstrip("/")
        return cls(
            host=parts.hostname,
            port=parts.port or 6379,
            password=unquote(parts.password) if parts.password else None,
            db=int(db) if db else 0,
        )

    def __str__(self) -> str:  # never the password
        return f"{self.host}:{self.port}/{self.db}"


class DispatchClaims:
    def __init__(self, address: RedisAddress | None, *, ttl: float, timeout: float) -> None:
        self._address = address
        self._ttl_ms = max(1, int(ttl * 1000))
        self._timeout = timeout
        self._token = uuid.uuid4().hex  # this watcher's, so it releases only its own claims

    async def claim(self, name: str) -> bool | None:
        """True: this watcher won `name`; False: another one holds it; None: no store to ask."""
        if self._address is None:
            return None
        try:
            reply = await self._command(
                "SET", KEY_PREFIX + name, self._token, "NX", "PX", str(self._ttl_ms)
            )
        except _UNREACHABLE as error:
            logger.warning(
                "the claim store (%s) cannot be reached: dispatching without a claim (%s)",
                self._address,
                type(error).__name__,
            )
            return None
        return reply == "OK"

    async def release(self, name: str) -> None:
        """Give a claim back (the dispatch it was for could not be made): others may try now."""
        if self._address is None:
            return
        try:
            await self._command("EVAL", _RELEASE, "1", KEY_PREFIX + name, self._token)
        except _UNREACHABLE as error:
            logger.warning(
                "could not release a claim (it expires by itself): %s", type(error).__name__
            )

    async def _command(self, *args: str) -> object:
        assert self._address is not None
        async with asyncio.timeout(self._timeout):
            reader, writer = await asyncio.open_connection(self._address.host, self._address.port)
            try:
                if self._address.password is not None:
                    await _call(reader, writer, "AUTH", self._address.password)
                if self._address.db:
                    await _call(reader, writer, "SELECT", str(self._address.db))
                return await _call(reader, writer, *args)
            finally:
                writer.close()
                await writer.wait_closed()


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *args: str) -> object:
    encoded = [a.encode() for a in args]
    writer.write(
        b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in encoded)
    )
    await writer.drain()
    return await _reply(reader)


async def _reply(reader: asyncio.StreamReader) -> object:
    line = (await reader.readuntil(b"\r\n"))[:-2]
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise ClaimStoreError(
            rest.decode(errors="replace").split(" ", 1)[0]
        )  # the error's code only
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        return (await reader.readexactly(size + 2))[:-2].decode(errors="replace")
    raise ClaimStoreError("not a reply Redis sends to these commands")
