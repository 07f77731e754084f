"""PocketSphinx decoding: phrases first, free text as the fallback. Also the decoder process's main.

PocketSphinx's general language model hears synthetic and unclear speech badly, while a grammar of a few
phrases decodes them well and fast. So every utterance is decoded twice, from the same audio:

1. against the general language model (free text);
2. against a grammar of known phrases (the responder's, any sequence of them).

The phrases win when the grammar parses the whole utterance and its path score is no worse than the free
decode's by more than `phrase_margin` per 10 ms frame. Both scores are comparable because every senone is
scored in every frame, so both searches normalise each frame alike. The grammar's language score alone
favours a phrase over the same words in free text; the margin decides how much worse acoustically a phrase
may fit before the free text is believed instead.

The PocketSphinx binding holds the GIL while it decodes (seconds for a long utterance), which would
stall an event loop even from another thread. So decoding runs in a process of its own, this module run
as a script (`python sphinx_decoder.py '<config json>'`): it imports nothing but the standard library and
PocketSphinx. Protocol on stdin/stdout: one JSON line when ready (or failed); then per request a 4-byte
big-endian length and that much 16 kHz 16-bit mono PCM, answered by one JSON line. It exits at the end of
its input, so it never outlives the process that started it.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Final, Literal

SAMPLE_RATE: Final = 16_000  # the en-us acoustic model's rate
# Per 10 ms frame, in PocketSphinx's log units. Measured on eSpeak NG's en-us voice at 140 and 175 words
# a minute: the responder's phrases score from 8 worse to 7 better than their free decode; other
# sentences the grammar can force onto phrases score from 27 worse to 6 better, most of them more than
# 6 worse. A wrong canned answer misleads more than an echo of misheard words, so the bar is high.
DEFAULT_PHRASE_MARGIN: Final = 6.0
LENGTH: Final = struct.Struct(">I")

_PHRASE_SEARCH: Final = "phrases"
_WORD: Final = re.compile(r"[a-z']+")

Source = Literal["phrases", "free", "none"]


class SphinxError(RuntimeError):
    """PocketSphinx could not be set up with the requested phrases."""


@dataclass(frozen=True)
class Recognition:
    """What one utterance decoded to, and which search produced it."""

    text: str
    source: Source
    phrase_text: str | None  # the grammar's complete parse, if any
    free_text: str
    margin: float | None  # phrase score minus free score, per frame; None without a parse


def normalize_phrase(phrase: str) -> str:
    words = _WORD.findall(phrase.lower())
    if not words:
        raise ValueError(f"phrase {phrase!r} has no words")
    return " ".join(words)


def phrase_grammar(phrases: Iterable[str]) -> str:
    """A JSGF grammar accepting any sequence of `phrases` (normalised)."""
    return (
        "#JSGF V1.0;\n"
        f"grammar {_PHRASE_SEARCH};\n"
        "public <utterance> = <phrase>+;\n"
        f"<phrase> = {' | '.join(phrases)};\n"
    )


def parses_as_phrases(text: str, phrases: Sequence[str]) -> bool:
    """Whether `text` is a non-empty sequence of whole `phrases`.

    The grammar search returns its best partial path when no path reaches the grammar's end,
    which is how an utterance that is not made of phrases shows up.
    """
    words = text.split()
    tokens = [phrase.split() for phrase in phrases]
    reachable = [False] * (len(words) + 1)
    reachable[0] = True
    for start in range(len(words)):
        if reachable[start]:
            for token in tokens:
                if words[start : start + len(token)] == token:
                    reachable[start + len(token)] = True
    return bool(words) and reachable[-1]


class SphinxRecognizer:
    """One PocketSphinx decoder with a phrase grammar and the general language model.

    Blocking, holds the GIL, not thread-safe. Loading takes about a second.
    """

    def __init__(self, phrases: Sequence[str], *, phrase_margin: float) -> None:
        from pocketsphinx import Decoder

        self._phrases = tuple(normalize_phrase(p) for p in phrases)
        self._phrase_margin = phrase_margin
        self._decoder = Decoder(
            samprate=SAMPLE_RATE,
            # "Final result does not match the grammar" is an ERROR line, and is how a sentence that
            # is not made of phrases shows up; real failures raise.
            loglevel="FATAL",
            # Score every senone in every frame: path scores of the two searches become comparable.
            compallsen=True,
            # One pass each: the second passes cost about as much again for no better phrases.
            fwdflat=False,
            bestpath=False,
        )
        if self._phrases:
            missing = sorted(
                {
                    word
                    for phrase in self._phrases
                    for word in phrase.split()
                    if self._decoder.lookup_word(word) is None
                }
            )
            if missing:
                raise SphinxError(
                    f"words not in the PocketSphinx dictionary: {', '.join(missing)} "
                    "(rephrase them with dictionary words)"
                )
            self._decoder.add_jsgf_string(_PHRASE_SEARCH, phrase_grammar(self._phrases))

    def recognize(self, pcm: bytes) -> Recognition:
        """Decode one utterance of 16 kHz, 16-bit mono PCM."""
        free_text, free_score, frames = self._decode(pcm, search=None)
        if not self._phrases or free_score is None or frames == 0:
            return self._free(free_text)
        phrase_text, phrase_score, _ = self._decode(pcm, search=_PHRASE_SEARCH)
        if phrase_score is None or not parses_as_phrases(phrase_text, self._phrases):
            return self._free(free_text)
        margin = (phrase_score - free_score) / frames
        if margin >= -self._phrase_margin:
            return Recognition(phrase_text, "phrases", phrase_text, free_text, margin)
        return self._free(free_text, phrase_text, margin)

    @staticmethod
    def _free(
        free_text: str, phrase_text: str | None = None, margin: float | None = None
    ) -> Recognition:
        source: Source = "free" if free_text else "none"
        return Recognition(free_text, source, phrase_text, free_text, margin)

    def _decode(self, pcm: bytes, *, search: str | None) -> tuple[str, int | None, int]:
        decoder = self._decoder
        # Fresh feature extraction (noise and cepstral mean estimates): an utterance decodes the
        # same whatever came before it.
        decoder.reinit_feat()
        if search is None:
            decoder.activate_search()  # the language model the decoder was created with
        else:
            decoder.activate_search(search)
        decoder.start_utt()
        try:
            decoder.process_raw(pcm, full_utt=True)
        finally:
            decoder.end_utt()
        hypothesis = decoder.hyp()
        frames = int(decoder.n_frames())
        if hypothesis is None:
            return "", None, frames
        # The binding hands the path score over exponentiated; back to PocketSphinx's log units.
        score = int(decoder.logmath.log(hypothesis.score))
        return str(hypothesis.hypstr), score, frames


def _reply(output: BinaryIO, message: dict[str, Any]) -> None:
    output.write(json.dumps(message).encode() + b"\n")
    output.flush()


def serve(config: dict[str, Any], requests: BinaryIO, replies: BinaryIO) -> int:
    """Answer decode requests until the input ends (see the module's docstring)."""
    try:
        recognizer = SphinxRecognizer(
            config["phrases"], phrase_margin=float(config["phrase_margin"])
        )
    except (SphinxError, ValueError, RuntimeError) as error:
        _reply(replies, {"error": str(error)})
        return 2
    _reply(replies, {"ready": True})
    while len(header := requests.read(LENGTH.size)) == LENGTH.size:
        (size,) = LENGTH.unpack(header)
        pcm = requests.read(size)
        if len(pcm) != size:
            break
        try:
            _reply(replies, asdict(recognizer.recognize(pcm)))
        except RuntimeError as error:
            _reply(replies, {"error": f"decoding failed: {error}"})
    return 0


if __name__ == "__main__":
    sys.exit(serve(json.loads(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer))
