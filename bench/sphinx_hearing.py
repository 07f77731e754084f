"""What the offline recogniser hears of eSpeak NG's voice, and how fast.

Each sentence is said by eSpeak NG (en-us) at two speeds, a few times each (eSpeak's output varies a
little from run to run), and decoded by SphinxSTT with the responder's phrases. Prints what was heard
and by which search (phrases / free text), the share of exact transcripts, and the decoding's real-time
factor (wall time / audio time, through the decoder process).

    uv run python -m bench.sphinx_hearing --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

import psutil
from livekit import rtc

from speech.espeak_tts import default_engine
from speech.responder import INTENT_PHRASES
from speech.sphinx_decoder import SAMPLE_RATE
from speech.sphinx_stt import SphinxSTT, to_model_pcm

# (what is said, the transcript that counts as right)
SENTENCES = (
    ("hello", "hello"),
    ("hi", "hi"),
    ("hey", "hey"),
    ("who are you", "who are you"),
    ("hello, who are you?", "hello who are you"),
    ("what time is it", "what time is it"),
    ("help", "help"),
    ("who are you and what time is it", "who are you what time is it"),
    ("how are you", "how are you"),
    ("where are you", "where are you"),
    ("what is the weather like today", "what is the weather like today"),
    ("open the door please", "open the door please"),
    ("tell me a story", "tell me a story"),
    ("good morning", "good morning"),
    ("thank you very much", "thank you very much"),
    ("can you hear me", "can you hear me"),
    ("how old are you", "how old are you"),
    ("yes", "yes"),
    ("stop", "stop"),
)
SPEEDS = (175, 140)  # words a minute


async def main(repeats: int) -> None:
    engine = default_engine()
    stt = SphinxSTT(phrases=INTENT_PHRASES)
    exact = total = 0
    decode_seconds = audio_seconds = 0.0
    try:
        await stt.recognize_pcm(bytes(SAMPLE_RATE), deadline_s=60)  # starts the decoder process
        for said, right in SENTENCES:
            heard: Counter[tuple[str, str]] = Counter()
            for speed in SPEEDS:
                for _ in range(repeats):
                    raw = await engine.render(said, voice="en-us", words_per_minute=speed)
                    pcm = to_model_pcm([rtc.AudioFrame(raw, engine.sample_rate, 1, len(raw) // 2)])
                    started = time.perf_counter()
                    result = await stt.recognize_pcm(pcm, deadline_s=120)
                    decode_seconds += time.perf_counter() - started
                    audio_seconds += len(pcm) / 2 / SAMPLE_RATE
                    heard[(result.text, result.source)] += 1
                    exact += result.text == right
                    total += 1
            shown = ", ".join(f"{text!r} [{source}] x{n}" for (text, source), n in heard.items())
            print(f"{said!r:36} -> {shown}", flush=True)
    finally:
        await stt.aclose()
    print(f"\nexact transcripts: {exact}/{total} ({exact / total:.0%})")
    print(
        f"decoding real-time factor: {decode_seconds / audio_seconds:.2f} "
        f"({decode_seconds:.1f}s for {audio_seconds:.1f}s of speech; "
        f"load average {psutil.getloadavg()[0]:.1f} on {psutil.cpu_count()} cores)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    asyncio.run(main(parser.parse_args().repeats))
