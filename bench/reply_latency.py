"""The offline conversation's reply latency, and what listening costs the job process.

Real livekit-server, the worker as a process (`agent.py start`), the offline voice, a user who speaks
sentences eSpeak NG says into a microphone track. Prints, per run, the time from the end of the user's
sentence to the first reply audio the user hears from the avatar (and when the user's transcript came
back, the recogniser's part), their median; and the CPU share of the job process (and of its
PocketSphinx decoder process) while the agent listens to silence.

    uv run python -m bench.reply_latency --runs 10                  # local avatar, in the job process
    uv run python -m bench.reply_latency --provider lemonslice      # avatar in this process (emulator)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
from livekit import api

from speech.espeak_tts import default_engine
from tests.support.avatar_launcher import LocalAvatarLauncher
from tests.support.dispatch import dispatch_to_workers
from tests.support.emulators import LemonSliceEmulator
from tests.support.livekit_server import LiveKitServer, server_api, server_binary_path
from tests.support.room_user import AGENT_STATE_ATTRIBUTE, RoomUser, job_avatar_identity
from tests.support.worker import WorkerProcess, worker_environment

SENTENCE = "who are you"
AUDIBLE_RMS = 300.0
IDENTITIES = {"local": "local-avatar-agent", "lemonslice": "lemonslice-avatar-agent"}


@dataclass(frozen=True)
class Run:
    heard_transcript: float  # end of the sentence -> the user's own transcript back
    first_audio: float  # end of the sentence -> first reply audio heard


@dataclass(frozen=True)
class CpuShare:
    job: float  # of one core
    decoder: float
    seconds: float


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def decoder_processes(job: psutil.Process, worker: psutil.Process) -> list[psutil.Process]:
    """The job's decoder: started by the job, or forked by the worker's decoder server (the bench
    runs one job at a time, so every decoder the server forked is this job's)."""
    servers = [p for p in worker.children() if "--fork-server" in p.cmdline()]
    return [
        *(p for p in job.children(recursive=True) if "sphinx_decoder" in " ".join(p.cmdline())),
        *(child for server in servers for child in server.children()),
    ]


async def listening_cpu(job: psutil.Process, worker: psutil.Process, seconds: float) -> CpuShare:
    decoders = decoder_processes(job, worker)
    job_before = cpu_seconds(job)
    decoder_before = sum(cpu_seconds(p) for p in decoders)
    started = time.monotonic()
    await asyncio.sleep(seconds)  # the measurement window itself
    elapsed = time.monotonic() - started
    return CpuShare(
        job=(cpu_seconds(job) - job_before) / elapsed,
        decoder=(sum(cpu_seconds(p) for p in decoders) - decoder_before) / elapsed,
        seconds=elapsed,
    )


async def measure(
    server: LiveKitServer, provider: str, runs: int, listen_seconds: float, workdir: Path
) -> tuple[list[Run], CpuShare]:
    engine = default_engine()
    pcm = await engine.render(SENTENCE, voice="en-us", words_per_minute=175)
    extra = {"AVATAR_PROVIDER": provider}
    emulator: LemonSliceEmulator | None = None
    if provider == "lemonslice":
        emulator = LemonSliceEmulator(api_key="bench-key", avatar_launcher=LocalAvatarLauncher())
        await emulator.start()
        extra |= emulator.worker_settings("bench")
    avatar = IDENTITIES[provider]
    agent_name = f"bench-reply-{uuid.uuid4().hex[:6]}"
    room = f"bench-reply-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(worker_environment(server, agent_name, extra), cwd=workdir)
    results: list[Run] = []
    try:
        await worker.start()
        user = await RoomUser.join(server, room)
        try:
            await user.start_microphone()
            async with server_api(server) as lk:
                await dispatch_to_workers(lk, agent_name, room, [worker])
            agent = await user.wait_for_agent(timeout=60)
            avatar = job_avatar_identity(avatar, agent.identity)  # unique to the job
            await user.wait_for_transcript(agent.identity, "offline voice", timeout=60)
            await user.wait_for_attribute(agent.identity, AGENT_STATE_ATTRIBUTE, "listening")
            ear = await user.listen(avatar)
            job_record = await worker.wait_for_log(
                lambda r: r.get("room") == room and r.get("pid") not in (None, worker.pid),
                timeout=10,
            )
            cpu = await listening_cpu(
                psutil.Process(int(job_record["pid"])), psutil.Process(worker.pid), listen_seconds
            )
            print(
                f"listening to silence for {cpu.seconds:.0f}s: job process {cpu.job:.1%} of a "
                f"core, its decoder process {cpu.decoder:.1%}",
                flush=True,
            )

            me = user.room.local_participant.identity
            for index in range(runs):
                started = time.monotonic()
                said_at = await user.speak(pcm, engine.sample_rate)
                sound = await ear.first_sound_after(said_at, threshold=AUDIBLE_RMS)
                transcript = await user.wait_for_transcript(me, "", since=started)
                results.append(Run(transcript.received_at - said_at, sound.received_at - said_at))
                print(
                    f"run {index + 1}: heard {transcript.text!r}; transcript back "
                    f"{results[-1].heard_transcript:.2f}s, first reply audio "
                    f"{results[-1].first_audio:.2f}s",
                    flush=True,
                )
                # Let the reply end before the next question.
                await user.wait_for_attribute(agent.identity, AGENT_STATE_ATTRIBUTE, "speaking")
                await user.wait_for_attribute(
                    agent.identity, AGENT_STATE_ATTRIBUTE, "listening", timeout=60
                )
        finally:
            await user.leave()
            async with server_api(server) as lk:
                await lk.room.delete_room(api.DeleteRoomRequest(room=room))
    finally:
        await worker.stop()
        if emulator is not None:
            await emulator.aclose()
    return results, cpu


async def main(provider: str, runs: int, listen_seconds: float) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-reply-"))
    print("worker log in", workdir)
    with LiveKitServer(server_binary_path()) as server:
        results, cpu = await measure(server, provider, runs, listen_seconds, workdir)
    transcripts = [r.heard_transcript for r in results]
    replies = [r.first_audio for r in results]
    load = psutil.getloadavg()
    print(
        f"\n{provider} avatar, {runs} runs of {SENTENCE!r} (seconds after the end of the sentence)"
    )
    print(f"{'':32} {'median':>7} {'min':>7} {'max':>7}")
    for label, values in (
        ("user's transcript back", transcripts),
        ("first reply audio heard", replies),
    ):
        print(f"{label:32} {statistics.median(values):7.2f} {min(values):7.2f} {max(values):7.2f}")
    print(
        f"recogniser's share of the reply latency: "
        f"{statistics.median(transcripts) / statistics.median(replies):.0%}"
    )
    print(
        f"CPU while listening: job process {cpu.job:.1%} of a core, decoder process "
        f"{cpu.decoder:.1%} ({psutil.cpu_count()} cores; load average {load[0]:.1f} at the end)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--provider", choices=sorted(IDENTITIES), default="local")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--listen-seconds", type=float, default=10.0)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.provider, arguments.runs, arguments.listen_seconds))
