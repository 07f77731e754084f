"""What the user says while the agent says something it will not cut short is answered right after it.

livekit-agents (1.8.9) drops such speech: by default the speech-to-text gets silence while an
uninterruptible speech plays (`discard_audio_if_uninterruptible`), and a user turn that ends during
one is skipped ("current speech generation cannot be interrupted"), its transcript gone. So the
session transcribes it (`discard_audio_if_uninterruptible=False`, speech/pipeline.py), and while an
uninterruptible speech is in flight the user's turn is held open with the framework's own manual
turn detection (nothing ends it, nothing interrupts). When the last such speech has ended, the
usual turn detection comes back and, if the user said something and has stopped speaking, the turn
is committed (`commit_user_turn`): the framework answers it as any other turn. If the user is still
speaking, the turn ends as usual, the earlier words included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from livekit.agents import AgentSession, SpeechCreatedEvent, UserInputTranscribedEvent
from livekit.agents.voice import SpeechHandle

logger = logging.getLogger("avatar-agent.turns")

# How long a typed message waits at most for the reply to a held turn to be made (it comes within
# the endpointing delay, 0.5 s by default, once the turn is committed).
REPLY_WAIT = 5.0
_SCHEDULER_TURNS = 100


class HeldTurns:
    """Holds the user's turn open while the agent says something it will not cut short."""

    def __init__(self, session: AgentSession[Any]) -> None:
        self._session = session
        self._speeches: set[SpeechHandle] = set()  # uninterruptible, not yet done
        self._usual_turn_detection: Any = None
        self._heard = False  # the user said something (a final transcript) while held
        self._tasks: set[asyncio.Task[None]] = set()
        # No held turn waiting to be committed and answered: a typed message waits for this.
        self.settled: asyncio.Event = asyncio.Event()
        self.settled.set()
        self._reply_created = asyncio.Event()
        session.on("speech_created", self._on_speech_created)
        session.on("user_input_transcribed", self._on_transcribed)

    def _on_speech_created(self, event: SpeechCreatedEvent) -> None:
        speech = event.speech_handle
        if speech.allow_interruptions or speech.done():
            self._reply_created.set()
            return
        if not self._speeches:
            self._usual_turn_detection = self._session.turn_detection
            self._session.update_options(turn_detection="manual")
            self._heard = False
        self._speeches.add(speech)
        self.settled.clear()
        speech.add_done_callback(self._on_speech_done)

    def _on_transcribed(self, event: UserInputTranscribedEvent) -> None:
        if self._speeches and event.is_final and event.transcript.strip():
            self._heard = True

    def _on_speech_done(self, speech: SpeechHandle) -> None:
        self._speeches.discard(speech)
        if self._speeches:
            return
        task = asyncio.create_task(self._release(speech), name="held_turns.release")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, speech: SpeechHandle) -> None:
        try:
            # The framework's scheduler lets go of the speech a few loop turns after marking it
            # done (no event says so); a turn committed before that would still be skipped.
            for _ in range(_SCHEDULER_TURNS):
                if self._session.current_speech is not speech:
                    break
                await asyncio.sleep(0)
            if self._speeches:
                return  # another uninterruptible speech started meanwhile: still held
            self._session.update_options(turn_detection=self._usual_turn_detection)
            if self._heard and self._session.user_state != "speaking":
                self._reply_created.clear()
                # What the user said is final already: no need to wait for more.
                said = await self._session.commit_user_turn(transcript_timeout=0.0)
                if said:
                    # Settled once the framework has made the turn's reply (bounded, in case
                    # it decides not to answer).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(REPLY_WAIT):
                            await self._reply_created.wait()
        except RuntimeError as error:  # the session is closing
            logger.debug("held turn not committed: %s", error)
        finally:
            self._heard = False
            if not self._speeches:
                self.settled.set()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
