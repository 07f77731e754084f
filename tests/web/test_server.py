"""The page's server over a real socket on 127.0.0.1: the token endpoint, the files, and its refusals."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from livekit import api
from livekit.api.access_token import Claims

from tests.support.livekit_server import unavailable
from web.server import (
    BIND_HOST,
    TOKEN_TTL,
    SdkNotInstalledError,
    WebSettings,
    sdk_bundle,
    serve,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "devkey"
API_SECRET = "web-test-secret-0123456789abcdef0123456789"
AGENT = "page-agent"


@pytest.fixture
async def site() -> AsyncIterator[str]:
    try:
        sdk_bundle()
    except SdkNotInstalledError as error:
        unavailable(str(error))
    settings = WebSettings(
        livekit_url="ws://127.0.0.1:7880",
        livekit_api_key=API_KEY,
        livekit_api_secret=API_SECRET,
        agent_name=AGENT,
    )
    async with serve(settings) as url:
        yield url


async def post_token(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}api/token", data=body, headers=headers or {}) as response,
    ):
        return response.status, await response.json()


def claims_of(token: str) -> Claims:
    return api.TokenVerifier(API_KEY, API_SECRET).verify(token)


async def test_binds_to_loopback_only(site: str) -> None:
    assert site.startswith(f"http://{BIND_HOST}:")


async def test_each_visit_gets_a_new_room_whose_token_dispatches_the_agent(site: str) -> None:
    status, first = await post_token(site)
    assert status == 200
    _, second = await post_token(site)
    assert first["server_url"] == "ws://127.0.0.1:7880"
    assert first["agent_name"] == AGENT
    assert first["room_name"] != second["room_name"]
    assert first["participant_identity"] != second["participant_identity"]

    claims = claims_of(first["participant_token"])
    assert claims.identity == first["participant_identity"]
    assert claims.video is not None
    assert claims.video.room_join and claims.video.room == first["room_name"]
    assert not claims.video.room_admin and not claims.video.room_create
    assert claims.room_config is not None
    assert [a.agent_name for a in claims.room_config.agents] == [AGENT]


async def test_the_token_is_short_lived(site: str) -> None:
    _, details = await post_token(site)
    part = details["participant_token"].split(".")[1]
    payload = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    # livekit-api reads the clock once for nbf and again for exp, each to the second
    ttl = int(TOKEN_TTL.total_seconds())
    assert payload["exp"] - payload["nbf"] in (ttl, ttl + 1)


async def test_a_display_name_is_taken(site: str) -> None:
    body = json.dumps({"participant_name": "Ada"}).encode()
    status, details = await post_token(site, body, {"Content-Type": "application/json"})
    assert status == 200
    assert claims_of(details["participant_token"]).name == "Ada"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "names"),
    [
        (b'{"room_name": "mine"}', "application/json", 400, "room_name"),
        (b'{"participant_name": ""}', "application/json", 400, "participant_name"),
        (b'{"participant_name": 7}', "application/json", 400, "participant_name"),
        (b"[1, 2]", "application/json", 400, "body"),
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"participant_name=Ada", "application/x-www-form-urlencoded", 415, "application/json"),
    ],
)
async def test_a_bad_request_is_refused_naming_what_is_wrong(
    site: str, body: bytes, content_type: str, status: int, names: str
) -> None:
    got, answer = await post_token(site, body, {"Content-Type": content_type})
    assert got == status
    assert names in answer["error"]
    assert "participant_token" not in answer


async def test_a_request_for_another_host_name_is_refused(site: str) -> None:
    """A page on some other name that resolves to 127.0.0.1 (DNS rebinding) gets no token."""
    port = site.rsplit(":", 1)[1].rstrip("/")
    status, answer = await post_token(site, headers={"Host": f"rebind.example:{port}"})
    assert status == 403
    assert "127.0.0.1" in answer["error"]
    status, _ = await post_token(site, headers={"Host": f"localhost:{port}"})
    assert status == 200


async def test_serves_the_page_and_the_pinned_sdk_without_caching(site: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(site) as page:
            assert page.status == 200
            html = await page.text()
            assert page.headers["Cache-Control"] == "no-store"
        for src in ("/vendor/livekit-client.umd.js", "/static/app.js", "/static/style.css"):
            assert src in html
            async with session.get(site.rstrip("/") + src) as asset:
                assert asset.status == 200, src
        async with session.get(site.rstrip("/") + "/vendor/livekit-client.umd.js") as sdk:
            assert (await sdk.read()) == sdk_bundle().read_bytes()


def _web_dir(tmp_path: Path, installed: str | None) -> Path:
    (tmp_path / "package.json").write_text(
        json.dumps({"dependencies": {"livekit-client": "2.23.0"}})
    )
    if installed is not None:
        package = tmp_path / "node_modules" / "livekit-client"
        package.mkdir(parents=True)
        (package / "package.json").write_text(json.dumps({"version": installed}))
    return tmp_path


def test_a_missing_sdk_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(
        SdkNotInstalledError, match=r"2\.23\.0 is not installed: run scripts/web-deps"
    ):
        sdk_bundle(_web_dir(tmp_path, installed=None))


def test_a_different_installed_sdk_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SdkNotInstalledError, match=r"2\.22\.1 is installed but .* pins 2\.23\.0"):
        sdk_bundle(_web_dir(tmp_path, installed="2.22.1"))


def test_the_pinned_sdk_is_what_the_lock_installs() -> None:
    pinned = json.loads((REPO_ROOT / "web" / "package.json").read_text())["dependencies"]
    lock = json.loads((REPO_ROOT / "web" / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/livekit-client"]["version"] == pinned["livekit-client"]
    assert lock["packages"][""]["dependencies"] == pinned


def test_missing_settings_stop_the_server_naming_them_and_no_value(tmp_path: Path) -> None:
    secret = "a-secret-that-must-not-be-printed"
    result = subprocess.run(
        [sys.executable, "-m", "web.server", "--port", "0"],
        cwd=tmp_path,  # no .env there
        env={"PATH": "/usr/bin:/bin", "LIVEKIT_API_SECRET": secret, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "LIVEKIT_URL" in result.stderr and "LIVEKIT_API_KEY" in result.stderr
    assert "LIVEKIT_API_SECRET" not in result.stderr
    assert secret not in result.stderr + result.stdout
