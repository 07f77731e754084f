"""The agent's voice: LiveKit Inference in the cloud, or an offline voice that needs no account.

LiveKit Inference (STT/LLM/TTS model strings) needs LiveKit Cloud. Against a self-hosted or local server the
agent would otherwise join and stay silent; the offline voice is a whole conversation from installed packages:
Silero VAD (livekit-local-inference), PocketSphinx speech recognition (speech/sphinx_stt.py), a deterministic
responder in the place of the language model (speech/responder.py) and eSpeak NG (speech/espeak_tts.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

from livekit.agents import NOT_GIVEN, AgentSession, inference

from config import Settings
from observability import health

from .decoder_server import DecoderServer
from .espeak_tts import EspeakTTS
from .prepared_speech import PreparedSpeech, prepare
from .responder import INTENT_PHRASES, OfflineResponder
from .sphinx_stt import SphinxSTT

logger = logging.getLogger("avatar-agent.speech")

OFFLINE_GREETING = (
    "Hello! This is the offline voice: no cloud, no language model. "
    "Talk to me or type, and I will answer. Say help to hear how to get a full conversation."
)

# The greeting is said whole, by both voices. It is the call's first few seconds, when a false
# interruption is most likely (the user saying hello back, a cough, echo before the browser's echo
# canceller has settled), and an avatar cannot pause and resume, so a greeting cut short is lost:
# the user never hears what the agent is and how to talk to it. Nothing the user says meanwhile is
# lost (held_turns.py, chat.py): it is answered right after the greeting.
GREETING_INTERRUPTIBLE = False
# livekit-agents feeds the speech-to-text silence for the first 3 s the agent speaks, so that echo
# cannot interrupt it before the user's echo canceller has settled. The greeting cannot be
# interrupted anyway, and that warm-up would drop the user's "hello" said back to it: off.
AEC_WARMUP = None
# How the worker's health (observability/health.py) names the decoder server when it is gone.
DECODER_SERVER_HEALTH = "speech decoder server"


class VoicePipeline(Protocol):
    """What a job needs from the voice: the session and how to open the conversation. The agent
    itself (instructions and tools) is the same for both voices: assistant.py."""

    @property
    def mode(self) -> Literal["cloud", "offline"]: ...

    def create_session(self) -> AgentSession[Any]: ...

    def prepare_greeting(self) -> PreparedSpeech | None:
        """The greeting's audio, made before any job (in prewarm), when its words are fixed."""
        ...

    async def greet(self, session: AgentSession[Any], prepared: PreparedSpeech | None) -> None: ...

    def worker_services(self) -> contextlib.AbstractContextManager[None]:
        """What the worker process runs for all its jobs, for as long as it runs."""
        ...


def uses_livekit_cloud(livekit_url: str | None) -> bool:
    host = urlparse(livekit_url or "").hostname or ""
    return host == "livekit.cloud" or host.endswith(".livekit.cloud")


@dataclass(frozen=True)
class CloudVoice:
    settings: Settings
    mode: Literal["cloud", "offline"] = "cloud"

    def create_session(self) -> AgentSession[Any]:
        return AgentSession(
            stt=inference.STT(model=self.settings.stt_model, language=self.settings.stt_language),
            llm=inference.LLM(model=self.settings.llm_model),
            tts=inference.TTS(model=self.settings.tts_model, voice=self.settings.tts_voice),
            aec_warmup_duration=AEC_WARMUP,
            # An avatar cannot pause its playback, so a false interruption cannot be resumed.
            # What the user says during the greeting is transcribed and answered after it
            # (held_turns.py), not discarded.
            turn_handling={
                "interruption": {
                    "resume_false_interruption": False,
                    "discard_audio_if_uninterruptible": False,
                }
            },
        )

    def prepare_greeting(self) -> PreparedSpeech | None:
        return None  # the language model words it, in each call

    async def greet(self, session: AgentSession[Any], prepared: PreparedSpeech | None) -> None:
        greeting = getattr(session.current_agent, "greeting", self.settings.agent_greeting)
        await session.generate_reply(
            instructions=greeting, allow_interruptions=GREETING_INTERRUPTIBLE
        )

    def worker_services(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


@dataclass(frozen=True)
class OfflineVoice:
    greeting: str = OFFLINE_GREETING
    mode: Literal["cloud", "offline"] = "offline"

    def create_session(self) -> AgentSession[Any]:
        # The user's speech: Silero VAD cuts it into utterances (the session wraps the non-streaming
        # STT in the library's VAD stream adapter), PocketSphinx transcribes each one, the responder
        # answers it as it answers typed messages (lk.chat). The VAD also ends turns and interrupts.
        # The cloud's adaptive interruption and turn detector models are not available offline.
        return AgentSession(
            stt=SphinxSTT(phrases=INTENT_PHRASES),
            vad=inference.VAD(),
            llm=OfflineResponder(),
            tts=EspeakTTS(),
            aec_warmup_duration=AEC_WARMUP,
            turn_handling={
                "turn_detection": "vad",
                "interruption": {
                    "mode": "vad",
                    "resume_false_interruption": False,
                    "discard_audio_if_uninterruptible": False,  # see CloudVoice
                },
            },
        )

    def prepare_greeting(self) -> PreparedSpeech | None:
        return prepare(EspeakTTS, self.greeting)

    async def greet(self, session: AgentSession[Any], prepared: PreparedSpeech | None) -> None:
        # Audio made in prewarm plays at once; the same words synthesised now come after the
        # voice's time to first audio.
        audio = (
            prepared.audio() if prepared is not None and prepared.text == self.greeting else None
        )
        await session.say(
            self.greeting,
            audio=audio if audio is not None else NOT_GIVEN,
            allow_interruptions=GREETING_INTERRUPTIBLE,
        )

    @contextlib.contextmanager
    def worker_services(self) -> Iterator[None]:
        # The speech model loaded once for all the worker's jobs (see speech/decoder_server.py).
        try:
            server = DecoderServer.start(INTENT_PHRASES)
        except OSError as error:
            logger.warning(
                "no speech decoder server (%s): each job loads the speech model itself", error
            )
            yield
            return
        health.watch(DECODER_SERVER_HEALTH, server.alive)
        try:
            yield
        finally:
            health.unwatch(DECODER_SERVER_HEALTH)
            server.stop()


def build_voice(settings: Settings) -> VoicePipeline:
    mode = settings.voice_mode
    if mode == "auto":
        mode = "cloud" if uses_livekit_cloud(settings.livekit_url) else "offline"
    return CloudVoice(settings) if mode == "cloud" else OfflineVoice()
