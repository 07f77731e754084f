"""Speech synthesis that needs no cloud service."""

from .espeak_tts import (
    EspeakChunkedStream,
    EspeakEngine,
    EspeakError,
    EspeakTTS,
    EspeakVoiceError,
    default_engine,
)

__all__ = [
    "EspeakChunkedStream",
    "EspeakEngine",
    "EspeakError",
    "EspeakTTS",
    "EspeakVoiceError",
    "default_engine",
]
