"""The local web page and its token endpoint. LOCAL DEVELOPMENT ONLY: it hands a LiveKit token to anyone
who can reach it, so it binds to 127.0.0.1 and answers only requests addressed to this machine.

    python -m web.server [--port 8000]      # then open the URL it prints

Every visit gets a new room; the token's room configuration dispatches the agent (AGENT_NAME) into it.
The page itself is static (web/static) on LiveKit's browser SDK, `livekit-client`, installed by npm from
web/package-lock.json and served from web/node_modules: no CDN, no build step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from web.token import user_token

logger = logging.getLogger("avatar-agent.web")

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
SDK_PACKAGE = "livekit-client"
SDK_BUNDLE = "dist/livekit-client.umd.js"
BIND_HOST = "127.0.0.1"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
# The page's token only has to last until it joins; LiveKit refreshes a connected participant's token.
TOKEN_TTL = timedelta(minutes=10)
NAME_MAX_LENGTH = 64


class WebSettings(BaseSettings):
    """What the page's server needs: the LiveKit server the browser joins, and the agent to dispatch."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    livekit_url: str
    livekit_api_key: SecretStr
    livekit_api_secret: SecretStr
    agent_name: str = Field(default="avatar-agent", min_length=1)


def load_web_settings() -> WebSettings:
    """The settings, or a `SystemExit` naming each missing or invalid variable (never a value)."""
    try:
        return WebSettings()
    except ValidationError as error:
        problems = [
            f"  - {'.'.join(str(p) for p in issue['loc']).upper()}: {issue['msg']}"
            for issue in error.errors(include_input=False)
        ]
        raise SystemExit("web.server: invalid configuration:\n" + "\n".join(problems)) from None


class SdkNotInstalledError(RuntimeError):
    pass


def sdk_bundle(web_dir: Path = WEB_DIR) -> Path:
    """The browser bundle of the pinned livekit-client; raises if npm has not installed exactly it."""
    pinned = json.loads((web_dir / "package.json").read_text())["dependencies"][SDK_PACKAGE]
    installed_manifest = web_dir / "node_modules" / SDK_PACKAGE / "package.json"
    fix = "run scripts/web-deps.sh (npm ci in web/)"
    if not installed_manifest.is_file():
        raise SdkNotInstalledError(f"{SDK_PACKAGE} {pinned} is not installed: {fix}")
    installed = json.loads(installed_manifest.read_text())["version"]
    if installed != pinned:
        raise SdkNotInstalledError(
            f"{SDK_PACKAGE} {installed} is installed but web/package.json pins {pinned}: {fix}"
        )
    return installed_manifest.parent / SDK_BUNDLE


class TokenRequest(BaseModel):
    """The body of POST /api/token. The server chooses the room, the identity and the agent."""

    model_config = ConfigDict(extra="forbid")

    participant_name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX_LENGTH)


@dataclass(frozen=True)
class ConnectionDetails:
    server_url: str
    participant_token: str
    room_name: str
    participant_identity: str
    agent_name: str

    def to_json(self) -> dict[str, str]:
        # server_url + participant_token: the shape livekit-client's TokenSource.endpoint reads.
        return {
            "server_url": self.server_url,
            "participant_token": self.participant_token,
            "room_name": self.room_name,
            "participant_identity": self.participant_identity,
            "agent_name": self.agent_name,
        }


def new_connection(settings: WebSettings, *, participant_name: str | None) -> ConnectionDetails:
    """A token for a fresh room, whose creation dispatches the agent."""
    room = f"avatar-{secrets.token_hex(4)}"
    identity = f"user-{secrets.token_hex(3)}"
    token = user_token(
        api_key=settings.livekit_api_key.get_secret_value(),
        api_secret=settings.livekit_api_secret.get_secret_value(),
        room=room,
        agent_name=settings.agent_name,
        identity=identity,
        name=participant_name or "You",
        ttl=TOKEN_TTL,
    )
    return ConnectionDetails(settings.livekit_url, token, room, identity, settings.agent_name)


SETTINGS_KEY = web.AppKey("settings", WebSettings)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def only_this_machine(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Binding to 127.0.0.1 keeps other machines out; checking the Host header keeps out web pages
    # that point a name of their own at 127.0.0.1 (DNS rebinding) to read a token.
    if request.url.host not in LOCAL_HOSTS:
        return _error(403, "this development server only answers http://127.0.0.1 or localhost")
    response = await handler(request)
    response.headers["Cache-Control"] = "no-store"
    return response


async def issue_token(request: web.Request) -> web.Response:
    raw = await request.read()
    body: Any = {}
    if raw.strip():
        if request.content_type != "application/json":
            return _error(415, "send the body as application/json (or no body at all)")
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "the body is not valid JSON")
    try:
        wanted = TokenRequest.model_validate(body)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in issue['loc']) or 'body'}: {issue['msg']}"
            for issue in error.errors(include_input=False)
        )
        return _error(400, f"invalid token request ({problems})")
    details = new_connection(request.app[SETTINGS_KEY], participant_name=wanted.participant_name)
    logger.info(
        "new room %s for %s (agent %s)",
        details.room_name,
        details.participant_identity,
        details.agent_name,
    )
    return web.json_response(details.to_json())


def _file(path: Path) -> Handler:
    async def send(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    return send


def create_app(settings: WebSettings, *, sdk: Path | None = None) -> web.Application:
    """The page, its static files, the SDK bundle and the token endpoint."""
    bundle = sdk or sdk_bundle()
    app = web.Application(middlewares=[only_this_machine])
    app[SETTINGS_KEY] = settings
    app.router.add_get("/", _file(STATIC_DIR / "index.html"))
    app.router.add_post("/api/token", issue_token)
    app.router.add_get("/vendor/livekit-client.umd.js", _file(bundle))
    app.router.add_static("/static/", STATIC_DIR)
    return app


@contextlib.asynccontextmanager
async def serve(settings: WebSettings, *, port: int = 0) -> AsyncIterator[str]:
    """Serve the page on 127.0.0.1:`port` (0: any free port); yields the page's URL."""
    runner = web.AppRunner(create_app(settings), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, BIND_HOST, port)
        await site.start()
        host, bound_port = runner.addresses[0][:2]
        yield f"http://{host}:{bound_port}/"
    finally:
        await runner.cleanup()


async def _run(settings: WebSettings, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve(settings, port=port) as url:
        print(f"Local development page (not for production): {url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The local avatar page (development only).")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = load_web_settings()
    try:
        sdk_bundle()
    except SdkNotInstalledError as error:
        raise SystemExit(f"web.server: {error}") from None
    try:
        asyncio.run(_run(settings, args.port))
    except OSError as error:
        print(f"web.server: cannot listen on {BIND_HOST}:{args.port}: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
