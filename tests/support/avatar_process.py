"""The emulated providers' avatars, in a process of their own: `python -m tests.support.avatar_process`.

The test process hosts the users and the emulators; the avatars a provider sends into rooms render
video, play speech and run their rooms here instead, all of them in this one process (an interpreter
with livekit takes seconds of CPU to load: one per avatar overloads a 2-core machine in the heaviest
tests). livekit's native client can take its process down (docs/native-crash.md); that is then the
avatars' crash, which the agent survives, and not the test run's.

The protocol is JSON lines, each naming its avatar by a number ("avatar"). Standard input: a launch
({"avatar": 1, "launch": {...}}), then commands ({"avatar": 1, "do": "crash"} drops out of the room
with no goodbye, "close" leaves); its end closes every avatar and the process. Standard output:
events ({"avatar": 1, "event": "joining" | "started" | "start_failed" | "stats" | "crashed" | "left" |
"closed", ...}), and the process's log records ({"event": "log", ...}, no avatar).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import faulthandler
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from providers.local.participant import (
    LocalAvatarOptions,
    LocalAvatarParticipant,
    LocalAvatarStats,
    Samples,
    _PlaybackEvent,
    _PlaybackFinished,
    _PlaybackStarted,
)

NORMAL = "normal"
UNCONFIRMING = "unconfirming"
CRASH_AT_FIRST_SPEECH = "crash_at_first_speech"
KINDS = (NORMAL, UNCONFIRMING, CRASH_AT_FIRST_SPEECH)


class _UnconfirmingAvatar(LocalAvatarParticipant):
    """Plays the agent's speech but never answers lk.playback_finished."""

    def _notify(self, events: Sequence[_PlaybackEvent]) -> None:
        super()._notify([event for event in events if not isinstance(event, _PlaybackFinished)])


class _CrashingAvatar(LocalAvatarParticipant):
    """Drops out of the room (no goodbye, no playback confirmation) the moment it begins to play
    the first speech it is sent."""

    _crashing: asyncio.Task[None] | None = None

    def _notify(self, events: Sequence[_PlaybackEvent]) -> None:
        if self._crashing is None and any(isinstance(e, _PlaybackStarted) for e in events):
            room = self.room
            if room is not None:
                self._crashing = asyncio.ensure_future(room.disconnect())
        if self._crashing is None:
            super()._notify(events)
            return
        # gone: nothing it was sent is played while the room lets go of it
        self._speech.clear()
        if self._audio_source is not None:
            self._audio_source.clear_queue()

    async def _queue_audio(self, chunk: Samples) -> None:
        # The chunk whose speech began it is queued after `_notify`: dropped with the rest.
        if self._crashing is None:
            await super()._queue_audio(chunk)


_KIND_CLASSES: dict[str, type[LocalAvatarParticipant]] = {
    NORMAL: LocalAvatarParticipant,
    UNCONFIRMING: _UnconfirmingAvatar,
    CRASH_AT_FIRST_SPEECH: _CrashingAvatar,
}


def stats_to_json(stats: LocalAvatarStats) -> dict[str, Any]:
    return dataclasses.asdict(stats)


def stats_from_json(fields: dict[str, Any]) -> LocalAvatarStats:
    return LocalAvatarStats(**{**fields, "input_sample_rates": tuple(fields["input_sample_rates"])})


def _reported(stats: LocalAvatarStats) -> tuple[object, ...]:
    # What tests look at; frames and seconds move with every frame and are sent with these.
    return (
        stats.segments_started,
        stats.segments_finished,
        stats.segments_interrupted,
        stats.input_sample_rates,
    )


class _Events:
    """Writes events to standard output, one JSON object a line."""

    def send(self, event: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


class _AvatarEvents:
    """One avatar's events."""

    def __init__(self, events: _Events, number: int) -> None:
        self._events = events
        self._number = number

    def send(self, event: str, **fields: Any) -> None:
        self._events.send(event, avatar=self._number, **fields)


class _ForwardedLogs(logging.Handler):
    """Log records go to the test process, which logs them as its own (pytest shows them)."""

    def __init__(self, events: _Events) -> None:
        super().__init__(logging.INFO)
        self._events = events

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self._events.send(
                "log", name=record.name, level=record.levelno, message=self.format(record)
            )


async def _stdin_lines() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _report_stats(avatar: LocalAvatarParticipant, events: _AvatarEvents) -> None:
    stats = avatar.stats
    events.send("stats", stats=stats_to_json(stats))
    while True:
        stats = await avatar.wait_for_stats(_changed_from(_reported(stats)))
        events.send("stats", stats=stats_to_json(stats))


def _changed_from(reported: tuple[object, ...]) -> Callable[[LocalAvatarStats], bool]:
    return lambda stats: _reported(stats) != reported


async def _obey(
    avatar: LocalAvatarParticipant, commands: asyncio.Queue[str], events: _AvatarEvents
) -> None:
    while (command := await commands.get()) != "close":
        if command == "crash":
            if avatar.room is not None:
                await avatar.room.disconnect()
            events.send("crashed")
        else:
            raise ValueError(f"unknown command {command!r}")
    await avatar.aclose()


async def _start(avatar: LocalAvatarParticipant) -> bool:
    """True once it joined and published; False when the room let it go while it was starting
    (publishing can then wait forever: a provider counts the avatar as gone)."""
    starting = asyncio.ensure_future(avatar.start())
    closing = asyncio.ensure_future(avatar.wait_closed())
    await asyncio.wait({starting, closing}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        closing.cancel()
        starting.result()
        return True
    starting.cancel()
    with contextlib.suppress(BaseException):
        await starting
    return False


async def _serve_avatar(
    launch: dict[str, Any], commands: asyncio.Queue[str], events: _AvatarEvents
) -> None:
    kind = _KIND_CLASSES[launch["kind"]]
    avatar = kind(launch["url"], launch["token"], options=LocalAvatarOptions(**launch["options"]))
    left = False

    def report_left(*_: object) -> None:
        nonlocal left
        if not left:
            left = True
            events.send("left", at=time.monotonic())

    events.send("joining", at=time.monotonic())
    try:
        try:
            started = await _start(avatar)
        except Exception as error:  # reported to the test process, which raises it
            events.send("start_failed", error=f"{type(error).__name__}: {error}")
            await avatar.aclose()
            return
        reporter = asyncio.create_task(_report_stats(avatar, events))
        obeying = asyncio.create_task(_obey(avatar, commands, events))
        if started:
            assert avatar.room is not None
            avatar.room.on("disconnected", report_left)
            events.send("started", identity=avatar.identity)
        try:
            await avatar.wait_closed()
        finally:
            report_left()
            reporter.cancel()
            obeying.cancel()
            await asyncio.gather(reporter, obeying, return_exceptions=True)
            events.send("stats", stats=stats_to_json(avatar.stats))
    finally:
        report_left()
        events.send("closed")


def _forget(
    avatars: dict[int, tuple[asyncio.Queue[str], asyncio.Task[None]]],
    number: int,
    task: asyncio.Task[None],
) -> None:
    avatars.pop(number, None)
    if not task.cancelled() and (error := task.exception()) is not None:
        logging.getLogger(__name__).error("avatar %d failed", number, exc_info=error)


async def serve(events: _Events) -> None:
    lines = await _stdin_lines()
    avatars: dict[int, tuple[asyncio.Queue[str], asyncio.Task[None]]] = {}
    while line := await lines.readline():
        message = json.loads(line)
        number = int(message["avatar"])
        if "launch" in message:
            commands: asyncio.Queue[str] = asyncio.Queue()
            task = asyncio.create_task(
                _serve_avatar(message["launch"], commands, _AvatarEvents(events, number))
            )
            avatars[number] = (commands, task)
            task.add_done_callback(functools.partial(_forget, avatars, number))
        elif number in avatars:
            avatars[number][0].put_nowait(str(message["do"]))
    # Standard input closed: the test process is done with us (or gone). Every avatar leaves.
    running = list(avatars.values())
    for commands, _ in running:
        commands.put_nowait("close")
    await asyncio.gather(*(task for _, task in running), return_exceptions=True)


def main() -> None:
    faulthandler.enable()  # a native crash leaves its stacks on standard error
    events = _Events()
    forwarded = _ForwardedLogs(events)
    forwarded.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[forwarded])
    status = 0
    try:
        asyncio.run(serve(events))
    except BaseException:
        logging.getLogger(__name__).exception("the avatar host failed")
        status = 1
    # Skip the interpreter's finalization: livekit's native threads can call back into it while
    # it is torn down, and abort the process (docs/native-crash.md). Everything is closed by now.
    os._exit(status)


if __name__ == "__main__":
    main()
