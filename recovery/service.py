"""The recovery watcher as a service: webhooks in (verified), a sweep beside them, dispatches out.

    python -m recovery      # settings from the environment / .env, see RecoverySettings

Stateless: everything it decides on is read from LiveKit when it decides, so it can be restarted
at any moment, and several can run (each with its own RECOVERY_INDEX of RECOVERY_WATCHERS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web
from livekit import api
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .claim import DispatchClaims, RedisAddress
from .watcher import RecoveryWatcher, WatcherOptions

logger = logging.getLogger("avatar-agent.recovery")

WEBHOOK_PATH = "/webhook"


class RecoverySettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    livekit_url: str
    livekit_api_key: SecretStr
    livekit_api_secret: SecretStr
    agent_name: str = Field(default="avatar-agent", min_length=1)
    recovery_host: str = "127.0.0.1"
    recovery_port: int = Field(default=8090, ge=0, le=65535)
    recovery_index: int = Field(default=0, ge=0)
    recovery_watchers: int = Field(default=1, ge=1)
    recovery_sweep_interval: float = Field(default=5.0, gt=0)
    recovery_failover_delay: float = Field(default=3.0, ge=0)
    # The cluster's Redis (redis://[:password@]host[:port][/db]): one dispatch per death among
    # several watchers. Optional: without it, or while it is unreachable, recovery goes on.
    recovery_redis_url: SecretStr | None = None

    def watcher_options(self) -> WatcherOptions:
        if self.recovery_index >= self.recovery_watchers:
            raise ValueError("RECOVERY_INDEX must be below RECOVERY_WATCHERS")
        return WatcherOptions(
            agent_name=self.agent_name,
            index=self.recovery_index,
            watchers=self.recovery_watchers,
            sweep_interval=self.recovery_sweep_interval,
            failover_delay=self.recovery_failover_delay,
        )

    def claim_store(self) -> RedisAddress | None:
        url = self.recovery_redis_url
        return RedisAddress.parse(url.get_secret_value()) if url is not None else None


class WatcherService:
    def __init__(
        self,
        *,
        livekit_url: str,
        api_key: str,
        api_secret: str,
        options: WatcherOptions,
        host: str = "127.0.0.1",
        port: int = 0,
        claim_store: RedisAddress | None = None,
    ) -> None:
        self._livekit_url = livekit_url
        self._claim_store = claim_store
        self._api_key = api_key
        self._api_secret = api_secret
        self._options = options
        self._host = host
        self._port = port
        self._receiver = api.WebhookReceiver(api.TokenVerifier(api_key, api_secret))
        self._runner: web.AppRunner | None = None
        self._sweeps: asyncio.Task[None] | None = None
        self._lk: api.LiveKitAPI | None = None
        self.watcher: RecoveryWatcher | None = None
        self.webhooks_received = 0

    async def start(self) -> None:
        self._lk = api.LiveKitAPI(self._livekit_url, self._api_key, self._api_secret)
        claims = DispatchClaims(
            self._claim_store, ttl=self._options.claim_ttl, timeout=self._options.probe_timeout
        )
        self.watcher = RecoveryWatcher(self._lk, self._options, claims)
        app = web.Application()
        app.router.add_post(WEBHOOK_PATH, self._on_webhook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self._sweeps = asyncio.create_task(self.watcher.run_sweeps(), name="recovery-sweeps")
        logger.info("recovery watcher %d of %d up", self._options.index, self._options.watchers)

    async def _on_webhook(self, request: web.Request) -> web.Response:
        assert self.watcher is not None
        body = await request.text()
        try:
            event = self._receiver.receive(body, request.headers.get("Authorization", ""))
        except Exception:  # livekit-api raises bare Exception for a bad hash
            logger.warning("a webhook failed verification: ignored")
            return web.Response(status=401, text="not verified")
        self.webhooks_received += 1
        self.watcher.on_webhook(event)
        return web.Response(text="ok")

    async def stop(self) -> None:
        if self._sweeps is not None:
            self._sweeps.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeps
            self._sweeps = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.watcher is not None:
            await self.watcher.aclose()
        if self._lk is not None:
            await self._lk.aclose()
            self._lk = None


async def serve(settings: RecoverySettings) -> None:
    service = WatcherService(
        livekit_url=settings.livekit_url,
        api_key=settings.livekit_api_key.get_secret_value(),
        api_secret=settings.livekit_api_secret.get_secret_value(),
        options=settings.watcher_options(),
        claim_store=settings.claim_store(),
        host=settings.recovery_host,
        port=settings.recovery_port,
    )
    await service.start()
    try:
        await asyncio.Event().wait()
    finally:
        await service.stop()
