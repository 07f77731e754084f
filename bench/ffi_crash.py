"""How often livekit's native client crashes a process under our media load (issue 22).

Runs `--runs` child processes (`--parallel` at a time) against one real livekit-server, each for
`--seconds`, and counts how each ended: normally, by a signal (SIGSEGV, SIGABRT: the crash), or hung.
A child is one process carrying what a job process carries, several times over: in each of `--rooms`
rooms at once, the local avatar (providers/local, its real render loop: video and audio frames at the
configured rate), an agent streaming speech to it over data streams with interruptions (the clear_buffer
RPC, the playback RPCs back), and a user subscribed to its video and audio (a native event per frame).
Every `--room-seconds` each room is left and a new one joined, as jobs come and go.

    uv run python -m bench.ffi_crash --runs 20 --parallel 2 --seconds 60

A crashed child's stderr (faulthandler's trace of every thread) is kept under --keep. A tool, not a
test: the machine's load changes the rate, so the load is printed with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from livekit import rtc
from livekit.agents import utils
from livekit.agents.voice.avatar import DataStreamAudioOutput

from bench.workers import machine_load
from providers.local import LocalAvatarOptions, LocalAvatarParticipant
from tests.support.livekit_server import (
    LiveKitServer,
    connect_participant,
    mint_token,
    server_binary_path,
)

ROOT = Path(__file__).resolve().parents[1]
# The child reads the server's address and credentials from these, never from its command line.
URL_ENV, KEY_ENV, SECRET_ENV = "FFI_CRASH_URL", "FFI_CRASH_KEY", "FFI_CRASH_SECRET"
SPEECH_RATE = 24000
SEGMENT_S = 1.0
HANG_GRACE_S = 120.0
# The child's last words before the interpreter exits: a crash after them is a crash at exit.
CHILD_DONE = "child done: interpreter exiting"


@dataclass(frozen=True)
class ChildLoad:
    rooms: int
    seconds: float
    room_seconds: float
    options: LocalAvatarOptions


def _tone(seconds: float) -> list[rtc.AudioFrame]:
    t = np.arange(int(SPEECH_RATE * seconds)) / SPEECH_RATE
    pcm = (0.5 * 32767 * np.sin(2 * np.pi * 440.0 * t)).astype(np.int16)
    return [
        rtc.AudioFrame(chunk.tobytes(), SPEECH_RATE, 1, chunk.size)
        for chunk in np.array_split(pcm, max(1, pcm.size // (SPEECH_RATE // 50)))
    ]


class _Server:
    """The parts of LiveKitServer that connect_participant and mint_token read."""

    def __init__(self, ws_url: str, api_key: str, api_secret: str) -> None:
        self.ws_url, self.api_key, self.api_secret = ws_url, api_key, api_secret


async def _drain(stream: rtc.VideoStream | rtc.AudioStream) -> None:
    try:
        async for _ in stream:
            pass
    finally:
        await stream.aclose()


async def _speak(output: DataStreamAudioOutput, frames: list[rtc.AudioFrame]) -> None:
    """Speech without end: every other segment is interrupted part-way, as a user barging in."""
    for n in range(1_000_000):
        for frame in frames:
            await output.capture_frame(frame)
        output.flush()
        if n % 2:
            await asyncio.sleep(0.3)
            output.clear_buffer()
        await output.wait_for_playout()


async def _one_room(server: _Server, load: ChildLoad, frames: list[rtc.AudioFrame]) -> None:
    suffix = uuid.uuid4().hex[:8]
    name, agent_identity = f"crash-{suffix}", f"agent-{suffix}"
    agent = await connect_participant(
        server,  # type: ignore[arg-type]
        name,
        agent_identity,
        kind="agent",
        room_options=rtc.RoomOptions(auto_subscribe=False),
    )
    token = mint_token(
        server,  # type: ignore[arg-type]
        f"avatar-{suffix}",
        name,
        kind="agent",
        attributes={"lk.publish_on_behalf": agent_identity},
    )
    avatar = LocalAvatarParticipant(server.ws_url, token, options=load.options)
    user = rtc.Room()
    tasks: list[asyncio.Task[None]] = []

    def on_track(track: rtc.Track, *_: object) -> None:
        stream: rtc.VideoStream | rtc.AudioStream = (
            rtc.VideoStream(track)
            if track.kind == rtc.TrackKind.KIND_VIDEO
            else rtc.AudioStream(track, sample_rate=48000, num_channels=1)
        )
        tasks.append(asyncio.create_task(_drain(stream)))

    user.on("track_subscribed", on_track)
    try:
        await avatar.start()
        await user.connect(
            server.ws_url,
            mint_token(server, f"user-{suffix}", name),  # type: ignore[arg-type]
        )
        output = DataStreamAudioOutput(
            agent,
            destination_identity=avatar.identity,
            sample_rate=SPEECH_RATE,
            wait_remote_track=rtc.TrackKind.KIND_VIDEO,
            clear_buffer_timeout=5.0,
        )
        tasks.append(asyncio.create_task(_speak(output, frames)))
        await asyncio.sleep(load.room_seconds)
    finally:
        await utils.aio.cancel_and_wait(*tasks)
        await avatar.aclose()
        await user.disconnect()
        await agent.disconnect()


async def _room_slot(server: _Server, load: ChildLoad, deadline: float) -> None:
    frames = _tone(SEGMENT_S)
    while time.monotonic() < deadline:
        await _one_room(server, load, frames)


async def child(load: ChildLoad) -> None:
    server = _Server(os.environ[URL_ENV], os.environ[KEY_ENV], os.environ[SECRET_ENV])
    deadline = time.monotonic() + load.seconds
    await asyncio.gather(*(_room_slot(server, load, deadline) for _ in range(load.rooms)))
    print(CHILD_DONE, file=sys.stderr, flush=True)


def _outcome(returncode: int | None) -> str:
    if returncode is None:
        return "hung"
    if returncode < 0:
        return signal.Signals(-returncode).name
    return "ok" if returncode == 0 else f"exit {returncode}"


def _run_child(server: LiveKitServer, child_args: list[str], timeout: float, keep: Path) -> str:
    env = {
        **os.environ,
        URL_ENV: server.ws_url,
        KEY_ENV: server.api_key,
        SECRET_ENV: server.api_secret,
    }
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-X", "faulthandler", "-m", "bench.ffi_crash", "child", *child_args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            returncode: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            returncode = None
        outcome = _outcome(returncode)
        if outcome != "ok":
            stderr.seek(0)
            text = stderr.read().replace(server.api_secret.encode(), b"***")
            if outcome.startswith("SIG") and CHILD_DONE.encode() in text:
                outcome += " at exit"
            kept = keep / f"{outcome.replace(' ', '_')}-{process.pid}.log"
            kept.write_bytes(text)
            print(f"  child {process.pid}: {outcome} (stderr in {kept})", flush=True)
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=["parent", "child"], default="parent")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rooms", type=int, default=3)
    parser.add_argument("--room-seconds", type=float, default=8.0)
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--keep", type=Path, default=Path(tempfile.gettempdir()) / "ffi_crash")
    parser.add_argument(
        "--exit",
        choices=["finalize", "os-exit"],
        default="finalize",
        help="how a child ends once its rooms are closed: the interpreter's own exit (default), or "
        "os._exit, skipping finalization, as the emulated avatar processes do",
    )
    args = parser.parse_args()
    load = ChildLoad(
        rooms=args.rooms,
        seconds=args.seconds,
        room_seconds=args.room_seconds,
        options=LocalAvatarOptions(video_width=320, video_height=240, video_fps=args.fps),
    )
    if args.mode == "child":
        # Past its time, a child shows where each thread waits, before the parent kills it.
        faulthandler.dump_traceback_later(args.seconds + HANG_GRACE_S - 10, exit=False)
        asyncio.run(child(load))
        if args.exit == "os-exit":
            faulthandler.cancel_dump_traceback_later()
            os._exit(0)
        return

    child_args = [
        f"--seconds={args.seconds}",
        f"--rooms={args.rooms}",
        f"--room-seconds={args.room_seconds}",
        f"--fps={args.fps}",
        f"--exit={args.exit}",
    ]
    args.keep.mkdir(parents=True, exist_ok=True)
    print(f"livekit {rtc.__version__}; {machine_load()} at start", flush=True)
    started = time.monotonic()
    with LiveKitServer(server_binary_path()) as server, ThreadPoolExecutor(args.parallel) as pool:
        outcomes = Counter(
            pool.map(
                lambda _: _run_child(server, child_args, args.seconds + HANG_GRACE_S, args.keep),
                range(args.runs),
            )
        )
    elapsed = time.monotonic() - started
    crashes = sum(n for outcome, n in outcomes.items() if outcome.startswith("SIG"))
    process_hours = args.runs * args.seconds / 3600
    print(
        f"livekit {rtc.__version__}: {args.runs} runs of {args.seconds:.0f} s "
        f"({args.rooms} rooms each, {args.fps:g} fps, ending by {args.exit}), "
        f"{args.parallel} at a time, "
        f"in {elapsed:.0f} s; {machine_load()} at the end"
    )
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print(
        f"crashes: {crashes} of {args.runs} runs ({100 * crashes / args.runs:.0f} per hundred), "
        f"{crashes / process_hours:.1f} per process-hour"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
