"""The local page in a real browser: headless Chromium joins a room on a real livekit-server, the worker
runs as a process, and everything is asserted from inside the page, as a person would experience it:
the avatar's video decodes and keeps coming, its voice carries sound, the greeting is in the transcript,
and the page says plainly when the avatar or the agent did not come, or the avatar dropped out and is
coming back.

A screenshot of the page after the avatar answered is written to the test's tmp dir and to
build/browser/avatar-page.png, with the timings beside it in avatar-page.txt (BROWSER_ARTIFACTS_DIR
overrides the folder); the fallback's screenshot is build/browser/avatar-fallback.png.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from livekit import api
from playwright.async_api import Browser, Locator, Page

from speech.pipeline import OFFLINE_GREETING
from tests.support.avatar_launcher import JoinWhenReleased, LocalAvatarLauncher
from tests.support.emulators import LemonSliceEmulator, StatusFault
from tests.support.livekit_server import LiveKitServer, server_api, unavailable
from tests.support.worker import running_worker
from web.server import SdkNotInstalledError, WebSettings, sdk_bundle, serve

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = Path(os.environ.get("BROWSER_ARTIFACTS_DIR", REPO_ROOT / "build" / "browser"))
CHAT = "purple elephants dance on the moon"
FRAMES_TO_SEE = 48  # two seconds of the local avatar's 24 fps
AUDIBLE_ENERGY = 0.001  # totalAudioEnergy gained while speaking (silence gains ~0)
JOIN_TIMEOUT_MS = 90_000
LEMONSLICE_KEY = "ls-browser-key"

# Stats of the tracks the page shows (window.avatarPage), from their receivers' inbound-rtp entry.
INBOUND_STATS_JS = """
async (kind) => {
  const track = kind === 'video' ? window.avatarPage.videoTrack : window.avatarPage.audioTrack;
  if (!track) return null;
  const report = await track.getRTCStatsReport();
  if (!report) return null;
  for (const entry of report.values()) {
    if (entry.type === 'inbound-rtp') {
      return { framesDecoded: entry.framesDecoded ?? 0, totalAudioEnergy: entry.totalAudioEnergy ?? 0 };
    }
  }
  return null;
}
"""

# The participant whose track the page plays as the agent's voice.
AUDIO_OWNER_JS = """
() => {
  const { room, audioTrack } = window.avatarPage;
  if (!room || !audioTrack) return null;
  for (const p of room.remoteParticipants.values()) {
    for (const pub of p.trackPublications.values()) {
      if (pub.track === audioTrack) {
        return { identity: p.identity, onBehalf: p.attributes['lk.publish_on_behalf'] ?? null };
      }
    }
  }
  return null;
}
"""


@dataclass(frozen=True)
class PageSite:
    url: str
    agent_name: str


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1100, "height": 1000})
    opened = await context.new_page()
    console: list[str] = []
    opened.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    opened.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    try:
        yield opened
    finally:
        await context.close()
        errors = [line for line in console if line.startswith("pageerror")]
        assert not errors, "\n".join(console[-40:])


@pytest.fixture
async def site(livekit_server: LiveKitServer) -> AsyncIterator[PageSite]:
    agent_name = f"web-{uuid.uuid4().hex[:6]}"
    settings = WebSettings(
        livekit_url=livekit_server.ws_url,
        livekit_api_key=livekit_server.api_key,
        livekit_api_secret=livekit_server.api_secret,
        agent_name=agent_name,
    )
    try:
        sdk_bundle()
    except SdkNotInstalledError as error:
        unavailable(str(error))
    async with serve(settings) as url:
        yield PageSite(url, agent_name)


async def inbound_stats(page: Page, kind: str) -> dict[str, float]:
    stats = await page.evaluate(INBOUND_STATS_JS, kind)
    assert stats is not None, f"no inbound {kind} stats on the page"
    return dict(stats)


async def wait_for_stat(
    page: Page, kind: str, field: str, above: float, timeout_ms: int
) -> dict[str, float]:
    """Wait until the page's inbound `kind` stats have `field` > `above`; returns those stats.

    Polled inside the page (Playwright's wait_for_function does not await an async predicate).
    """
    result = await page.evaluate(
        f"""async ([kind, field, above, timeoutMs]) => {{
            const read = {INBOUND_STATS_JS};
            const deadline = performance.now() + timeoutMs;
            let last = null;
            while (performance.now() < deadline) {{
                last = await read(kind);
                if (last !== null && last[field] > above) return {{ reached: true, last }};
                await new Promise((resolve) => setTimeout(resolve, 200));
            }}
            return {{ reached: false, last }};
        }}""",
        [kind, field, above, timeout_ms],
    )
    assert result["reached"], f"{kind} {field} stayed at or below {above}: {result['last']}"
    return dict(result["last"])


async def notice(page: Page) -> dict[str, Any]:
    result = await page.evaluate(
        "() => { const n = document.getElementById('notice');"
        " return { kind: n.dataset.kind ?? null, text: n.textContent, hidden: n.hidden }; }"
    )
    return dict(result)


def agent_line(page: Page, text: str) -> Locator:
    """The transcript line of the agent's that contains `text` (lines grow as the agent speaks)."""
    return page.locator("#transcript li[data-speaker='agent']", has_text=text).first


def save_screenshot(shot: bytes, tmp_path: Path, name: str) -> Path:
    (tmp_path / name).write_bytes(shot)
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    stable = ARTIFACTS_DIR / name
    shutil.copyfile(tmp_path / name, stable)
    return stable


async def test_a_person_sees_and_hears_the_avatar(
    page: Page, site: PageSite, livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    async with running_worker(
        livekit_server, site.agent_name, tmp_path, {"AVATAR_PROVIDER": "local"}
    ):
        await page.goto(site.url)
        await page.click("#join")

        # the avatar's video: decoded in the page, at its size, and frames keep coming
        await page.wait_for_function(
            "() => document.getElementById('avatar-video').videoWidth > 0",
            polling=100,
            timeout=JOIN_TIMEOUT_MS,
        )
        size = await page.evaluate(
            "() => { const v = document.getElementById('avatar-video');"
            " return [v.videoWidth, v.videoHeight]; }"
        )
        assert size == [640, 480]
        # the page marks its first avatar frame when that frame is presented, which can come a
        # moment after the video element knows its size
        await page.wait_for_function(
            "() => window.avatarPage.timings.firstAvatarFrame !== undefined", timeout=10_000
        )
        timings = await page.evaluate("() => window.avatarPage.timings")
        first = await inbound_stats(page, "video")
        started = time.monotonic()
        later = await wait_for_stat(
            page, "video", "framesDecoded", first["framesDecoded"] + FRAMES_TO_SEE, 20_000
        )
        fps = (later["framesDecoded"] - first["framesDecoded"]) / (time.monotonic() - started)

        # the voice: the avatar's own audio track (it speaks for the agent), carrying sound. The
        # agent's own voice starts the greeting (docs/first-word.md); the page moves to the
        # avatar's track at the handover.
        await page.wait_for_function(
            f"() => {{ const owner = ({AUDIO_OWNER_JS})(); return owner && owner.onBehalf; }}",
            polling=100,
            timeout=60_000,
        )
        owner = await page.evaluate(AUDIO_OWNER_JS)
        assert owner is not None and owner["onBehalf"], owner
        audio_before = (await inbound_stats(page, "audio"))["totalAudioEnergy"]
        audio = await wait_for_stat(
            page, "audio", "totalAudioEnergy", audio_before + AUDIBLE_ENERGY, 60_000
        )

        # the greeting, in the transcript as the agent's words; then the agent listens
        await agent_line(page, OFFLINE_GREETING).wait_for(timeout=60_000)
        await page.locator("#agent-state", has_text="Agent: listening").wait_for(timeout=30_000)
        assert (await notice(page))["hidden"]

        # a typed message gets a spoken reply: the reply is in the transcript and carries sound
        before_reply = (await inbound_stats(page, "audio"))["totalAudioEnergy"]
        await page.fill("#chat-input", CHAT)
        await page.click("#chat-send")
        await page.locator("#transcript li[data-speaker='you']", has_text=CHAT).wait_for()
        await agent_line(page, f"You said: {CHAT}").wait_for(timeout=60_000)
        reply = await wait_for_stat(
            page, "audio", "totalAudioEnergy", before_reply + AUDIBLE_ENERGY, 30_000
        )

        shot = await page.screenshot(full_page=True)
        stable = save_screenshot(shot, tmp_path, "avatar-page.png")
        figures = (
            f"page load -> first avatar frame: {timings['firstAvatarFrame'] / 1000:.2f}s "
            f"(Start clicked at {timings['joinClicked'] / 1000:.2f}s, connected "
            f"{timings['connected'] / 1000:.2f}s); frames decoded {fps:.1f}/s; audio energy "
            f"{audio_before:.4f} -> {audio['totalAudioEnergy']:.4f} (greeting), "
            f"{before_reply:.4f} -> {reply['totalAudioEnergy']:.4f} (reply)"
        )
        (stable.parent / "avatar-page.txt").write_text(figures + "\n")
        print(f"\n[browser] {figures}; screenshot {stable}")

        # the microphone toggle mutes the page's microphone; leaving ends the visit
        assert await page.evaluate(
            "() => window.avatarPage.room.localParticipant.isMicrophoneEnabled"
        )
        await page.click("#mic")
        await page.wait_for_function(
            "() => !window.avatarPage.room.localParticipant.isMicrophoneEnabled", timeout=10_000
        )
        await page.click("#leave")
        await page.wait_for_function(
            "() => document.getElementById('notice').dataset.kind === 'left'", timeout=10_000
        )
        assert await page.is_visible("#join")


# The transcript's lines in order, as (speaker, text, state).
TRANSCRIPT_JS = """
() => [...document.querySelectorAll('#transcript li')].map(
  (li) => [li.dataset.speaker, li.textContent, li.dataset.state ?? null])
"""


async def test_a_message_typed_during_the_greeting_shows_at_once_and_its_answer_follows(
    page: Page, site: PageSite, livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    """Typed while the agent says its greeting (which it does not cut short): the message is in
    the transcript as soon as it is sent, and the agent's answer comes after the greeting, below
    it. A message over the agent's length limit is not sent: the page says why."""
    typed = "green turtles"
    async with running_worker(
        livekit_server, site.agent_name, tmp_path, {"AVATAR_PROVIDER": "local"}
    ):
        await page.goto(site.url)
        await page.click("#join")
        # the greeting's first words are on the page: it is being said (for about 10 s)
        await agent_line(page, "Hello").wait_for(timeout=JOIN_TIMEOUT_MS)
        await page.fill("#chat-input", typed)
        await page.click("#chat-send")
        # at once: in the transcript before anything else happens, and no answer yet
        lines = await page.evaluate(TRANSCRIPT_JS)
        assert lines[-1][:2] == ["you", typed], lines
        assert not any("You said" in text for _, text, _ in lines), lines

        await agent_line(page, f"You said: {typed}").wait_for(timeout=60_000)
        lines = await page.evaluate(TRANSCRIPT_JS)
        speakers_texts = [(speaker, text) for speaker, text, _ in lines]
        greeting = next(
            i for i, (who, text) in enumerate(speakers_texts) if "offline voice" in text
        )
        mine = speakers_texts.index(("you", typed))
        answer = speakers_texts.index(("agent", f"You said: {typed}"))
        assert greeting < mine < answer, lines
        assert lines[mine][2] == "sent", lines
        assert (await notice(page))["hidden"]

        # over the limit the agent publishes (chat.max_message_chars): kept in the box, not sent
        too_long = "la " * 400
        await page.fill("#chat-input", too_long)
        await page.click("#chat-send")
        error = page.locator("#chat-error[data-kind='too-long']")
        await error.wait_for(timeout=5_000)
        assert "up to 1000 characters" in (await error.text_content() or "")
        assert await page.input_value("#chat-input") == too_long
        assert len(await page.evaluate(TRANSCRIPT_JS)) == len(lines)
        # a message within it goes out, and the error goes away
        await page.fill("#chat-input", "hello")
        await page.click("#chat-send")
        await error.wait_for(state="hidden", timeout=5_000)


async def test_the_page_says_when_the_avatar_provider_refuses_and_plays_the_agents_voice(
    page: Page, site: PageSite, livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    async with LemonSliceEmulator(api_key=LEMONSLICE_KEY) as emulator:
        emulator.inject("create", StatusFault(402, "Insufficient credits"))
        provider = emulator.worker_settings("agent-browser")
        async with running_worker(livekit_server, site.agent_name, tmp_path, provider):
            await page.goto(site.url)
            await page.click("#join")
            await page.wait_for_function(
                "() => document.getElementById('notice').dataset.kind === 'avatar-fallback'",
                polling=100,
                timeout=JOIN_TIMEOUT_MS,
            )
            text = (await notice(page))["text"]
            assert "avatar could not start" in text and "own voice" in text, text
            # why, as the worker tells it (the agent's avatar.reason attribute)
            await page.wait_for_function(
                "() => document.getElementById('notice').textContent.includes('402')",
                polling=100,
                timeout=10_000,
            )

            # the voice the page plays is the agent's own track (the page knows of the fallback
            # from the status before that track arrives), and it carries sound
            handle = await page.wait_for_function(AUDIO_OWNER_JS, polling=100, timeout=20_000)
            owner = await handle.json_value()
            assert owner is not None and owner["onBehalf"] is None, owner
            await wait_for_stat(page, "audio", "totalAudioEnergy", AUDIBLE_ENERGY, 60_000)
            await agent_line(page, OFFLINE_GREETING).wait_for(timeout=60_000)
            assert [r.status for r in emulator.requests] == [402]
            save_screenshot(await page.screenshot(full_page=True), tmp_path, "avatar-fallback.png")


# The participant whose camera the page shows.
VIDEO_OWNER_JS = """
() => {
  const { room, videoTrack } = window.avatarPage;
  if (!room || !videoTrack) return null;
  for (const p of room.remoteParticipants.values()) {
    for (const pub of p.trackPublications.values()) {
      if (pub.track === videoTrack) return p.identity;
    }
  }
  return null;
}
"""


async def test_the_page_follows_the_avatar_dropping_out_and_coming_back(
    page: Page, site: PageSite, livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    """The avatar is removed mid-call: the page says it is coming back (the agent's avatar.status),
    then shows the new avatar's video."""
    launcher = LocalAvatarLauncher()
    async with LemonSliceEmulator(api_key=LEMONSLICE_KEY, avatar_launcher=launcher) as emulator:
        provider = emulator.worker_settings("agent-browser")
        async with running_worker(livekit_server, site.agent_name, tmp_path, provider):
            await page.goto(site.url)
            await page.click("#join")
            # the provider's identity, made unique to the job
            await page.wait_for_function(
                f"() => ({VIDEO_OWNER_JS})()?.startsWith('lemonslice-avatar-agent-')",
                polling=100,
                timeout=JOIN_TIMEOUT_MS,
            )
            avatar = await page.evaluate(f"() => ({VIDEO_OWNER_JS})()")
            room = await page.evaluate("() => window.avatarPage.room.name")
            async with server_api(livekit_server) as lk:  # the provider dropped it, or an admin
                await lk.room.remove_participant(
                    api.RoomParticipantIdentity(room=room, identity=avatar)
                )
            await page.wait_for_function(
                "() => document.getElementById('notice').dataset.kind === 'avatar-recovering'",
                polling=50,
                timeout=10_000,
            )
            text = (await notice(page))["text"]
            assert "dropped out" in text and "own voice" in text, text

            await page.wait_for_function(
                f"() => ({VIDEO_OWNER_JS})() === '{avatar}-1'",
                polling=100,
                timeout=30_000,
            )
            # the new avatar's own track: its frames count from zero
            await wait_for_stat(page, "video", "framesDecoded", FRAMES_TO_SEE, 20_000)
            await page.wait_for_function(
                "() => document.getElementById('notice').hidden", polling=100, timeout=10_000
            )
            assert len(emulator.requests_for("create")) == 2


async def test_the_page_says_when_no_agent_comes(page: Page, site: PageSite) -> None:
    """No worker serves this agent name: the page must not sit silently in an empty room."""
    await page.goto(site.url + "?agent_timeout=2")
    await page.click("#join")
    await page.wait_for_function(
        "() => document.getElementById('notice').dataset.kind === 'no-agent'", timeout=30_000
    )
    text = (await notice(page))["text"]
    assert "No agent came" in text and site.agent_name in text, text


# What the page shows and plays, sampled every 100 ms from inside the page: who owns the audio it
# plays (own: the agent's own track; avatar: its avatar's), whether video shows, the notice, and
# the audio energy played so far.
RECORD_JS = """
() => {
  window.firstWordRecord = [];
  const started = performance.now();
  window.firstWordTimer = setInterval(async () => {
    const { room, audioTrack } = window.avatarPage;
    let owner = null;
    if (room && audioTrack) {
      for (const p of room.remoteParticipants.values()) {
        for (const pub of p.trackPublications.values()) {
          if (pub.track === audioTrack) owner = p.attributes['lk.publish_on_behalf'] ? 'avatar' : 'own';
        }
      }
    }
    let energy = 0;
    if (audioTrack) {
      const report = await audioTrack.getRTCStatsReport();
      for (const entry of (report ? report.values() : [])) {
        if (entry.type === 'inbound-rtp') energy = entry.totalAudioEnergy ?? 0;
      }
    }
    window.firstWordRecord.push({
      t: Math.round(performance.now() - started), owner, energy,
      video: document.body.dataset.video, notice: document.getElementById('notice').dataset.kind ?? null,
    });
  }, 100);
}
"""


async def test_the_page_plays_the_agents_voice_at_once_then_the_avatar_takes_over(
    page: Page, site: PageSite, livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    """The first word at once (docs/first-word.md): the greeting plays in the agent's own voice
    while the avatar boots, the page saying the avatar is on its way; then the avatar's video
    shows and its voice carries the rest of the greeting. The page's record through the handover
    is written to build/browser/first-word.txt with screenshots before and after."""
    launcher = LocalAvatarLauncher()
    released = asyncio.Event()
    launcher.script(JoinWhenReleased(released))
    async with LemonSliceEmulator(api_key=LEMONSLICE_KEY, avatar_launcher=launcher) as emulator:
        provider = emulator.worker_settings("agent-browser")
        async with running_worker(livekit_server, site.agent_name, tmp_path, provider):
            await page.goto(site.url)
            await page.evaluate(RECORD_JS)
            await page.click("#join")

            # the agent's own voice, with sound, before any avatar; the page says it is coming
            handle = await page.wait_for_function(
                AUDIO_OWNER_JS, polling=100, timeout=JOIN_TIMEOUT_MS
            )
            owner = await handle.json_value()
            assert owner is not None and owner["onBehalf"] is None, owner
            await wait_for_stat(page, "audio", "totalAudioEnergy", AUDIBLE_ENERGY, 60_000)
            await page.wait_for_function(
                "() => document.getElementById('notice').dataset.kind === 'avatar-arriving'",
                polling=100,
                timeout=10_000,
            )
            assert await page.evaluate("() => document.body.dataset.video") == "off"
            before = save_screenshot(
                await page.screenshot(full_page=True), tmp_path, "first-word-before-avatar.png"
            )

            released.set()
            await page.wait_for_function(
                f"() => ({VIDEO_OWNER_JS})()?.startsWith('lemonslice-avatar-agent-')",
                polling=100,
                timeout=JOIN_TIMEOUT_MS,
            )
            # the avatar's voice takes over (the own track goes) and carries the greeting's rest
            await page.wait_for_function(
                f"() => ({AUDIO_OWNER_JS})()?.onBehalf", polling=50, timeout=30_000
            )
            await wait_for_stat(page, "audio", "totalAudioEnergy", AUDIBLE_ENERGY, 30_000)
            await agent_line(page, OFFLINE_GREETING).wait_for(timeout=60_000)
            after = save_screenshot(
                await page.screenshot(full_page=True), tmp_path, "first-word-avatar.png"
            )
            await page.locator("#agent-state", has_text="Agent: listening").wait_for(timeout=30_000)
            assert await agent_line(page, "offline voice").count() == 1
            assert (await notice(page))["hidden"]

            record = await page.evaluate(
                "() => { clearInterval(window.firstWordTimer); return window.firstWordRecord; }"
            )
            owners = [entry["owner"] for entry in record if entry["owner"]]
            # one voice, then the other, never back: own voice, then the avatar
            assert owners[0] == "own" and owners[-1] == "avatar", owners
            switches = [i for i in range(1, len(owners)) if owners[i] != owners[i - 1]]
            assert len(switches) == 1, owners
            lines = [
                f"{e['t'] / 1000:6.1f}s  audio {e['owner'] or '-':6}  energy {e['energy']:.4f}  "
                f"video {e['video']}  notice {e['notice'] or '-'}"
                for e in record
            ]
            text = "\n".join(lines)
            (before.parent / "first-word.txt").write_text(text + "\n")
            print(f"\n[browser] first word: screenshots {before}, {after}\n{text}")
