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

Loading the model costs about 0.3 CPU-seconds, and a worker runs many jobs. So a worker also starts one
fork server (`python sphinx_decoder.py --fork-server SOCKET '<config json>'`): it loads the model once,
then forks a decoder for each connection to its Unix socket, which shares the loaded model with it. A
connection starts with the client's config as one JSON line, answered by {"ready": true, "pid": ...}
(or {"mismatch": true} for a config the server was not loaded with); then the same protocol as above.
The server exits at the end of its standard input, and each forked decoder at the end of its
connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Final, Literal, NoReturn

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


def _load(config: dict[str, Any]) -> SphinxRecognizer:
    return SphinxRecognizer(config["phrases"], phrase_margin=float(config["phrase_margin"]))


def serve(config: dict[str, Any], requests: BinaryIO, replies: BinaryIO) -> int:
    """Answer decode requests until the input ends (see the module's docstring)."""
    try:
        recognizer = _load(config)
    except (SphinxError, ValueError, RuntimeError) as error:
        _reply(replies, {"error": str(error)})
        return 2
    _reply(replies, {"ready": True})
    _answer(recognizer, requests, replies)
    return 0


def _answer(recognizer: SphinxRecognizer, requests: BinaryIO, replies: BinaryIO) -> None:
    while len(header := requests.read(LENGTH.size)) == LENGTH.size:
        (size,) = LENGTH.unpack(header)
        pcm = requests.read(size)
        if len(pcm) != size:
            break
        try:
            _reply(replies, asdict(recognizer.recognize(pcm)))
        except RuntimeError as error:
            _reply(replies, {"error": f"decoding failed: {error}"})


def serve_forks(config: dict[str, Any], socket_path: str, control: BinaryIO, out: BinaryIO) -> int:
    """The fork server (see the module's docstring): until `control` ends, a decoder forked off the
    loaded model for each connection to `socket_path`."""
    try:
        recognizer = _load(config)
    except (SphinxError, ValueError, RuntimeError) as error:
        _reply(out, {"error": str(error)})
        return 2
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked decoders are reaped by the system
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(socket_path)
        listener.listen(64)
        _reply(out, {"ready": True, "pid": os.getpid()})
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(control, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is control:
                        if not os.read(control.fileno(), 4096):
                            return 0  # the worker is gone or done
                        continue
                    connection, _ = listener.accept()
                    if os.fork() == 0:
                        _forked_decoder(recognizer, config, listener, connection)
                    connection.close()
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(socket_path)
            os.rmdir(os.path.dirname(socket_path))  # the worker made it for the socket


def _forked_decoder(
    recognizer: SphinxRecognizer,
    config: dict[str, Any],
    listener: socket.socket,
    connection: socket.socket,
) -> NoReturn:
    """A forked decoder's whole life: it never returns into the server's code (whose cleanup
    would remove the server's socket)."""
    code = 1
    try:
        listener.close()
        code = _serve_connection(recognizer, config, connection)
    except OSError:
        code = 0  # the job went away mid-reply: its connection is gone, and so is the need
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _serve_connection(
    recognizer: SphinxRecognizer, config: dict[str, Any], connection: socket.socket
) -> int:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    with connection, connection.makefile("rb") as requests, connection.makefile("wb") as replies:
        try:
            asked = json.loads(requests.readline() or b"null")
        except ValueError:
            asked = None
        if asked != config:  # both are the client's `decoder_config`, as JSON
            _reply(replies, {"mismatch": True})
            return 0
        _reply(replies, {"ready": True, "pid": os.getpid()})
        _answer(recognizer, requests, replies)
    return 0


def main(argv: Sequence[str]) -> int:
    # Ctrl-C in a terminal reaches the whole process group; a decoder ends at the end of its input,
    # when the process it serves is done with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(argv) == 3 and argv[0] == "--fork-server":
        return serve_forks(json.loads(argv[2]), argv[1], sys.stdin.buffer, sys.stdout.buffer)
    return serve(json.loads(argv[0]), sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
