"""A long call: a message typed every 20 s for 10 minutes, the first one during the greeting.

Real livekit-server, the worker as a process (`agent.py start`), the offline voice, a user in the room
who types on lk.chat on a fixed schedule (not waiting for answers). Prints whether every message got
its answer (the responder repeats an unknown message back: "You said: ..."), each answer once, in the
order typed, and the job process's memory (RSS, and USS: the pages it has to itself) each minute, with
its growth from minute 1 to the end (the target is under 10 %).

    uv run python -m bench.long_call                                # local avatar, 10 minutes
    uv run python -m bench.long_call --minutes 3 --provider lemonslice
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
from livekit import api, rtc

from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import LemonSliceEmulator
from tests.support.livekit_server import LiveKitServer, server_api, server_binary_path
from tests.support.room_user import AGENT_STATE_ATTRIBUTE, RoomUser
from tests.support.worker import WorkerProcess, worker_environment

IDENTITIES = {"local": "local-avatar-agent", "lemonslice": "lemonslice-avatar-agent"}
MIB = 1024 * 1024
WORDS = (
    "apple", "river", "candle", "harbor", "meadow", "pencil", "violin", "garden", "rocket", "window",
    "forest", "button", "marble", "pillow", "ladder", "castle", "jacket", "bottle", "mirror", "planet",
)  # fmt: skip


@dataclass(frozen=True)
class Memory:
    at: float  # seconds since the first message
    rss: float  # MiB
    uss: float  # MiB


def message(index: int) -> str:
    """A message the responder repeats back, unique in the call."""
    return f"{WORDS[index % len(WORDS)]} {WORDS[(index * 7 + 3) % len(WORDS)]} number {index + 1}"


def memory_of(process: psutil.Process, since: float) -> Memory:
    info = process.memory_full_info()
    return Memory(time.monotonic() - since, info.rss / MIB, info.uss / MIB)


async def call(
    server: LiveKitServer, provider: str, minutes: float, interval: float, workdir: Path
) -> None:
    extra = {"AVATAR_PROVIDER": provider, "VOICE_MODE": "offline"}
    emulator: LemonSliceEmulator | None = None
    if provider == "lemonslice":
        emulator = LemonSliceEmulator(api_key="bench-key", avatar_launcher=LocalAvatarLauncher())
        await emulator.start()
        extra |= emulator.worker_settings("bench")
    avatar = IDENTITIES[provider]
    agent_name = f"bench-long-{uuid.uuid4().hex[:6]}"
    room = f"bench-long-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(worker_environment(server, agent_name, extra), cwd=workdir)
    try:
        await worker.start()
        user = await RoomUser.join(server, room)
        try:
            async with server_api(server) as lk:
                await dispatch_to_workers(lk, agent_name, room, [worker])
            agent = await user.wait_for_participant(
                kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT, not_identity=avatar, timeout=60
            )
            await user.wait_for_attribute(
                agent.identity, AGENT_STATE_ATTRIBUTE, "speaking", timeout=60
            )
            job_record = await worker.wait_for_log(
                lambda r: r.get("room") == room and r.get("pid") not in (None, worker.pid),
                timeout=10,
            )
            job = psutil.Process(int(job_record["pid"]))
            await _type_on_schedule(user, agent.identity, job, minutes, interval)
        finally:
            await user.leave()
            async with server_api(server) as lk:
                await lk.room.delete_room(api.DeleteRoomRequest(room=room))
    finally:
        await worker.stop()
        if emulator is not None:
            await emulator.aclose()


async def _type_on_schedule(
    user: RoomUser, agent: str, job: psutil.Process, minutes: float, interval: float
) -> None:
    count = max(1, int(minutes * 60 / interval))
    sent: list[str] = []
    memory: list[Memory] = []
    started = time.monotonic()
    next_minute = 60.0
    for index in range(count):
        text = message(index)
        await user.send_chat(text)
        sent.append(text)
        print(f"{time.monotonic() - started:6.1f}s typed {text!r}", flush=True)
        due = started + (index + 1) * interval
        while time.monotonic() < due:
            await asyncio.sleep(min(1.0, due - time.monotonic()))
            if time.monotonic() - started >= next_minute:
                memory.append(memory_of(job, started))
                print(
                    f"{memory[-1].at:6.1f}s job RSS {memory[-1].rss:.0f} MiB, "
                    f"USS {memory[-1].uss:.0f} MiB",
                    flush=True,
                )
                next_minute += 60.0
    # the last answer: at most a minute after the last message
    with contextlib.suppress(TimeoutError):
        await user.wait_for_transcript(agent, sent[-1], timeout=60)
    memory.append(memory_of(job, started))
    answers = [t.text.strip() for t in user.transcripts if t.speaker == agent and t.final]
    expected = [f"You said: {text}" for text in sent]
    answered = [text for text in expected if text in answers]
    twice = [text for text in expected if answers.count(text) > 1]
    in_order = [a for a in answers if a in expected] == answered
    print(f"\n{len(sent)} messages typed every {interval:.0f}s over {minutes:g} min")
    print(
        f"answered: {len(answered)}/{len(sent)}; answered twice: {len(twice)}; in order: {in_order}"
    )
    for text in expected:
        if text not in answers:
            print(f"  no answer to {text.removeprefix('You said: ')!r}")
    first, last = memory[0], memory[-1]
    print(
        f"job process memory: RSS {first.rss:.0f} MiB at {first.at:.0f}s -> {last.rss:.0f} MiB at "
        f"{last.at:.0f}s ({(last.rss - first.rss) / first.rss:+.1%}); USS {first.uss:.0f} -> "
        f"{last.uss:.0f} MiB ({(last.uss - first.uss) / first.uss:+.1%}); target under +10%"
    )


async def main(provider: str, minutes: float, interval: float) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-long-"))
    print("worker log in", workdir)
    with LiveKitServer(server_binary_path()) as server:
        await call(server, provider, minutes, interval, workdir)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--provider", choices=sorted(IDENTITIES), default="local")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=20.0, help="seconds between messages")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.provider, arguments.minutes, arguments.interval))
