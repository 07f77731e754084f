"""An offline text-to-speech for livekit-agents, built on the eSpeak NG C library.

The library and its voice data come from the `espeakng-loader` wheel and are driven through
ctypes, so speech works with no account and no network.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, Never

from livekit.agents import APIConnectOptions, APIError, tts
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS
from livekit.agents.utils import shortuuid

MIN_WORDS_PER_MINUTE: Final = 80
MAX_WORDS_PER_MINUTE: Final = 450

# Values from eSpeak NG's public header, speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_INITIALIZE_DONT_EXIT: Final = 0x8000  # report missing data instead of calling exit()
_POS_CHARACTER: Final = 1
_CHARS_UTF8: Final = 1
# A pause after the last clause: the session speaks one sentence per call, and without it
# consecutive sentences run into each other.
_END_PAUSE: Final = 0x1000
_PARAMETER_RATE: Final = 1
_EE_OK: Final = 0
_EE_NOT_FOUND: Final = 2
_BYTES_PER_SAMPLE: Final = 2
_BATCH_BYTES: Final = 22_050 * _BYTES_PER_SAMPLE  # about a second of eSpeak's output

# int callback(short *wav, int numsamples, espeak_EVENT *events); non-zero aborts synthesis.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)


class _VoiceSpec(ctypes.Structure):
    """espeak_VOICE: the properties espeak_SetVoiceByProperties matches a voice against."""

    _fields_ = (
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    )


# The C library keeps its voice, rate and output callback in process-global state and is not
# thread-safe: every call into it, from any engine object, holds this lock.
_LIBRARY_LOCK = threading.Lock()


class EspeakError(RuntimeError):
    """eSpeak NG could not be loaded, initialised or run."""


class EspeakVoiceError(EspeakError):
    """eSpeak NG has no voice or language by the requested name."""


class EspeakEngine:
    """The eSpeak NG library of this process: lazy initialisation, voice selection, synthesis.

    One engine per process is the normal case (see `default_engine`). Paths default to the ones
    shipped by `espeakng-loader`.
    """

    def __init__(self, *, library_path: str | None = None, data_path: str | None = None) -> None:
        self._library_path = library_path
        self._data_path = data_path
        self._library: ctypes.CDLL | None = None
        self._sample_rate = 0
        self._on_audio: Callable[[bytes], bool] | None = None
        self._callback_error: BaseException | None = None
        # The C library holds only a raw pointer to this; keeping it here keeps it alive.
        self._callback = _SynthCallback(self._deliver_audio)
        # Syntheses are serialised by the lock anyway; a thread of our own means waiting for
        # the lock never occupies the event loop's shared default executor.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")

    @property
    def sample_rate(self) -> int:
        """Output rate in Hz of the 16-bit mono PCM (initialises the library if needed)."""
        with _LIBRARY_LOCK:
            self._initialized_library()
            return self._sample_rate

    def check_voice(self, voice: str) -> None:
        """Raise `EspeakVoiceError` unless `voice` names a voice eSpeak NG can load."""
        with _LIBRARY_LOCK:
            self._select_voice(self._initialized_library(), voice)

    def synthesize(
        self,
        text: str,
        *,
        voice: str,
        words_per_minute: int,
        on_audio: Callable[[bytes], bool],
    ) -> None:
        """Speak `text`, blocking until done. Blocks the calling thread: call it from a worker.

        Each chunk of 16-bit mono PCM goes to `on_audio` as it is produced, on the calling
        thread; `on_audio` returns False to stop synthesis early.
        """
        encoded = text.replace("\x00", "").encode("utf-8")
        with _LIBRARY_LOCK:
            library = self._initialized_library()
            self._select_voice(library, voice)
            status = library.espeak_SetParameter(_PARAMETER_RATE, words_per_minute, 0)
            if status != _EE_OK:
                raise EspeakError(
                    f"eSpeak NG rejected the rate {words_per_minute} (status {status})"
                )
            library.espeak_SetSynthCallback(self._callback)
            self._on_audio = on_audio
            self._callback_error = None
            try:
                status = library.espeak_Synth(
                    encoded,
                    len(encoded) + 1,
                    0,
                    _POS_CHARACTER,
                    0,
                    _CHARS_UTF8 | _END_PAUSE,
                    None,
                    None,
                )
                library.espeak_Synchronize()
            finally:
                self._on_audio = None
            if self._callback_error is not None:
                raise EspeakError("handling eSpeak NG audio failed") from self._callback_error
            if status != _EE_OK:
                raise EspeakError(f"eSpeak NG synthesis failed (status {status})")

    async def speak(
        self,
        text: str,
        *,
        voice: str,
        words_per_minute: int,
        on_pcm: Callable[[bytes], None],
    ) -> None:
        """Speak `text` in the engine's worker thread, handing its PCM to `on_pcm` on the
        event loop in batches of about a second while synthesis runs.

        Batching keeps the loop's work per wake-up small however long the text is. Cancelling
        the caller stops the synthesis at its next chunk, so an interrupted long text does not
        hold the library.
        """
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        pending = bytearray()  # touched only by the worker thread

        def deliver(pcm: bytes) -> None:
            if not cancelled.is_set():
                on_pcm(pcm)

        def collect(chunk: bytes) -> bool:
            if cancelled.is_set():
                return False
            pending.extend(chunk)
            if len(pending) >= _BATCH_BYTES:
                loop.call_soon_threadsafe(deliver, bytes(pending))
                pending.clear()
            return True

        def run() -> bytes:
            self.synthesize(text, voice=voice, words_per_minute=words_per_minute, on_audio=collect)
            return bytes(pending)

        try:
            # Batches posted by the worker run on the loop before this await returns.
            tail = await loop.run_in_executor(self._executor, run)
        finally:
            cancelled.set()
        if tail:
            on_pcm(tail)

    async def render(self, text: str, *, voice: str, words_per_minute: int) -> bytes:
        """All of the PCM for `text` at once (see `speak`)."""
        batches: list[bytes] = []
        await self.speak(
            text, voice=voice, words_per_minute=words_per_minute, on_pcm=batches.append
        )
        return b"".join(batches)

    def _initialized_library(self) -> ctypes.CDLL:
        # Callers hold _LIBRARY_LOCK.
        if self._library is not None:
            return self._library
        library = _load_library(self._library_path)
        data_path = self._data_path if self._data_path is not None else _default_data_path()
        sample_rate = library.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if sample_rate <= 0:
            raise EspeakError(f"eSpeak NG could not initialise with its data at {data_path!r}")
        self._library = library
        self._sample_rate = sample_rate
        return library

    @staticmethod
    def _select_voice(library: ctypes.CDLL, voice: str) -> None:
        if not voice or "\x00" in voice:
            raise EspeakVoiceError(f"invalid eSpeak NG voice name {voice!r}")
        encoded = voice.encode("utf-8")
        status = library.espeak_SetVoiceByName(encoded)
        if status == _EE_NOT_FOUND:
            # Not a voice's name or file: it may be a language tag, such as 'en-gb'.
            status = library.espeak_SetVoiceByProperties(
                ctypes.byref(_VoiceSpec(languages=encoded))
            )
        if status == _EE_NOT_FOUND:
            raise EspeakVoiceError(
                f"eSpeak NG has no voice or language named {voice!r} "
                "(examples: 'en-us', 'en-gb', 'de', 'fr')"
            )
        if status != _EE_OK:
            raise EspeakError(f"eSpeak NG could not load the voice {voice!r} (status {status})")

    def _deliver_audio(self, wav: int | None, num_samples: int, _events: int | None) -> int:
        # Runs inside espeak_Synth on the synthesising thread; an exception must not unwind
        # through C, so it is kept and re-raised by synthesize().
        if not wav or num_samples <= 0 or self._on_audio is None:
            return 0
        try:
            keep_going = self._on_audio(ctypes.string_at(wav, num_samples * _BYTES_PER_SAMPLE))
        except BaseException as error:
            self._callback_error = error
            return 1
        return 0 if keep_going else 1


def _load_library(library_path: str | None) -> ctypes.CDLL:
    if library_path is None:
        try:
            import espeakng_loader
        except ImportError as error:
            raise EspeakError("the espeakng-loader package is not installed") from error
        library_path = str(espeakng_loader.get_library_path())
    try:
        library = ctypes.CDLL(library_path)
    except OSError as error:
        raise EspeakError(f"could not load the eSpeak NG library {library_path!r}") from error

    library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    library.espeak_Initialize.restype = ctypes.c_int
    library.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    library.espeak_SetSynthCallback.restype = None
    library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    library.espeak_SetVoiceByName.restype = ctypes.c_int
    library.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_VoiceSpec)]
    library.espeak_SetVoiceByProperties.restype = ctypes.c_int
    library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    library.espeak_SetParameter.restype = ctypes.c_int
    library.espeak_Synth.argtypes = [
        ctypes.c_char_p,  # text
        ctypes.c_size_t,  # size
        ctypes.c_uint,  # position
        ctypes.c_int,  # position_type
        ctypes.c_uint,  # end_position
        ctypes.c_uint,  # flags
        ctypes.c_void_p,  # unique_identifier
        ctypes.c_void_p,  # user_data
    ]
    library.espeak_Synth.restype = ctypes.c_int
    library.espeak_Synchronize.argtypes = []
    library.espeak_Synchronize.restype = ctypes.c_int
    return library


def _default_data_path() -> str:
    try:
        import espeakng_loader

        return str(espeakng_loader.get_data_path())
    except (ImportError, RuntimeError) as error:
        raise EspeakError(f"eSpeak NG voice data is unavailable: {error}") from error


@functools.cache
def default_engine() -> EspeakEngine:
    """The process-wide engine on the library and data shipped by `espeakng-loader`."""
    return EspeakEngine()


class EspeakTTS(tts.TTS[Never]):  # emits only the base events
    """A non-streaming TTS speaking with eSpeak NG, fully offline.

    `voice` is an eSpeak NG voice name or file ('en-us', 'en-us+f3', 'gmw/en-US') or a language
    tag ('en-gb', 'de'). Construction loads the library and the voice (milliseconds, on the
    calling thread) and raises `EspeakError` / `EspeakVoiceError` if either is unavailable.
    """

    def __init__(
        self,
        *,
        voice: str = "en-us",
        words_per_minute: int = 175,
        engine: EspeakEngine | None = None,
    ) -> None:
        if not MIN_WORDS_PER_MINUTE <= words_per_minute <= MAX_WORDS_PER_MINUTE:
            raise ValueError(
                f"words_per_minute must be within {MIN_WORDS_PER_MINUTE}..{MAX_WORDS_PER_MINUTE}, "
                f"got {words_per_minute}"
            )
        self._engine = engine if engine is not None else default_engine()
        self._engine.check_voice(voice)
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=self._engine.sample_rate,
            num_channels=1,
        )
        self._voice = voice
        self._words_per_minute = words_per_minute

    @property
    def model(self) -> str:
        return self._voice

    @property
    def provider(self) -> str:
        return "eSpeak NG"

    @property
    def voice(self) -> str:
        return self._voice

    @property
    def words_per_minute(self) -> int:
        return self._words_per_minute

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> EspeakChunkedStream:
        return EspeakChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    async def speak(self, text: str, *, on_pcm: Callable[[bytes], None]) -> None:
        """Speak `text` with this voice and rate, streaming 16-bit mono PCM to `on_pcm`."""
        await self._engine.speak(
            text, voice=self._voice, words_per_minute=self._words_per_minute, on_pcm=on_pcm
        )


class EspeakChunkedStream(tts.ChunkedStream):
    """One `EspeakTTS.synthesize` call: raw PCM pushed to the emitter while eSpeak produces it."""

    def __init__(self, *, tts: EspeakTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._espeak = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=shortuuid(),
            sample_rate=self._espeak.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        if not self._input_text.strip():
            return
        try:
            await self._espeak.speak(self._input_text, on_pcm=output_emitter.push)
        except EspeakError as error:
            raise APIError(f"eSpeak NG synthesis failed: {error}", retryable=False) from error
