"""The providers as the benchmark's workers see them: emulators with an API latency, whose avatars boot
for a while and then really join the room; in the bench process, or in a process of their own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from providers.local.participant import LocalAvatarOptions
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.emulators import AnamEmulator, EmulatorServer, LemonSliceEmulator

ROOT = Path(__file__).resolve().parents[1]
Provider = Literal["local", "lemonslice", "anam"]
PROVIDERS: tuple[Provider, ...] = ("local", "lemonslice", "anam")
IDENTITIES: dict[Provider, str] = {
    "local": "local-avatar-agent",
    "lemonslice": "lemonslice-avatar-agent",
    "anam": "anam-avatar-agent",
}
PROVIDER_KEY = "bench-provider-key"
SESSIONS_END_TIMEOUT = 60.0


@dataclass(frozen=True)
class Conditions:
    """The world the start-ups run in."""

    api_latency: float = 0.3  # per provider API call
    # once more on each new connection to the provider (DNS, TCP, TLS of a real API)
    connect_latency: float = 0.0
    avatar_boot: float = 1.0  # from the provider's create to the avatar starting to join
    first_audio_latency: float = 0.0  # the voice's time to first audio
    avatar_video: LocalAvatarOptions = field(default_factory=LocalAvatarOptions)

    def describe(self) -> str:
        video = self.avatar_video
        return (
            f"API latency {self.api_latency * 1000:.0f} ms per call (+{self.connect_latency * 1000:.0f} ms "
            f"per new connection), avatar boot "
            f"{self.avatar_boot * 1000:.0f} ms, voice first audio {self.first_audio_latency * 1000:.0f} ms, "
            f"avatar video {video.video_width}x{video.video_height}@{video.video_fps:g}"
        )


class ProviderEmulation:
    """One provider as the workers see it: its emulator (none for `local`), whose avatars really join."""

    def __init__(self, provider: Provider, conditions: Conditions) -> None:
        self.provider = provider
        self.identity = IDENTITIES[provider]
        self.launcher = LocalAvatarLauncher(
            boot_delay=conditions.avatar_boot, options=conditions.avatar_video
        )
        self.emulator: EmulatorServer | None = None
        latency, connect = conditions.api_latency, conditions.connect_latency
        if provider == "lemonslice":
            self.emulator = LemonSliceEmulator(
                PROVIDER_KEY,
                avatar_launcher=self.launcher,
                latency=latency,
                connect_latency=connect,
            )
        elif provider == "anam":
            self.emulator = AnamEmulator(
                PROVIDER_KEY,
                avatar_launcher=self.launcher,
                latency=latency,
                connect_latency=connect,
            )

    async def __aenter__(self) -> Self:
        if self.emulator is not None:
            await self.emulator.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.emulator is not None:
            await self.emulator.aclose()

    @property
    def has_reference(self) -> bool:
        return self.provider != "local"

    def settings(self) -> dict[str, str]:
        """The provider's variables, for our worker and the reference alike."""
        emulator = self.emulator
        if isinstance(emulator, LemonSliceEmulator):
            return emulator.worker_settings("bench-agent")
        if isinstance(emulator, AnamEmulator):
            return emulator.worker_settings("bench-avatar")
        return {}

    async def wait_sessions_ended(self) -> None:
        emulator = self.emulator
        if emulator is not None:
            async with asyncio.timeout(SESSIONS_END_TIMEOUT):
                await emulator.wait_until(lambda: emulator.active_sessions == ())


@dataclass(frozen=True)
class RemoteProvider:
    pid: int
    settings: dict[str, str]


@contextlib.asynccontextmanager
async def provider_in_own_process(
    provider: Provider, conditions: Conditions, workdir: Path
) -> AsyncIterator[RemoteProvider]:
    """The provider's emulator and avatars in a child process (bench/provider_process.py), with the
    provider variables for the worker. The process ends when this exits."""
    video = conditions.avatar_video
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.provider_process",
        f"--provider={provider}",
        f"--api-latency={conditions.api_latency}",
        f"--connect-latency={conditions.connect_latency}",
        f"--avatar-boot={conditions.avatar_boot}",
        f"--avatar-video={video.video_width}x{video.video_height}@{video.video_fps:g}",
        f"--log={workdir / f'provider-{provider}.log'}",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        async with asyncio.timeout(60):
            line = await process.stdout.readline()
        if not line:
            raise RuntimeError("the provider process exited before it was ready")
        settings: dict[str, str] = json.loads(line)["settings"]
        yield RemoteProvider(process.pid, settings)
    finally:
        process.stdin.close()
        try:
            async with asyncio.timeout(30):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def avatar_video(text: str) -> LocalAvatarOptions:
    """WIDTHxHEIGHT@FPS, e.g. 320x240@12."""
    try:
        size, fps = text.split("@")
        width, height = size.lower().split("x")
        return LocalAvatarOptions(
            video_width=int(width), video_height=int(height), video_fps=float(fps)
        )
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT@FPS, got {text!r}") from None


def add_condition_options(parser: argparse.ArgumentParser, *, video: str) -> None:
    """The emulated provider's options: API latency, connection latency, boot, avatar video."""
    parser.add_argument("--api-latency", type=float, default=0.3, help="seconds per API call")
    parser.add_argument(
        "--connect-latency", type=float, default=0.0, help="seconds more per new connection"
    )
    parser.add_argument(
        "--avatar-boot", type=float, default=1.0, help="seconds from the create to the join"
    )
    parser.add_argument(
        "--avatar-video",
        type=avatar_video,
        default=avatar_video(video),
        help=f"the emulated avatars' video, WIDTHxHEIGHT@FPS (default {video})",
    )


def conditions_from(args: argparse.Namespace) -> Conditions:
    """The conditions `add_condition_options` asked for (an instant voice)."""
    return Conditions(
        api_latency=args.api_latency,
        connect_latency=args.connect_latency,
        avatar_boot=args.avatar_boot,
        avatar_video=args.avatar_video,
    )
