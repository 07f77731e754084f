"""Speech synthesis and recognition that need no cloud service."""

from .espeak_tts import (
    EspeakChunkedStream,
    EspeakEngine,
    EspeakError,
    EspeakTTS,
    EspeakVoiceError,
    default_engine,
)
from .sphinx_stt import SphinxSTT

__all__ = [
    "EspeakChunkedStream",
    "EspeakEngine",
    "EspeakError",
    "EspeakTTS",
    "EspeakVoiceError",
    "SphinxSTT",
    "default_engine",
]
