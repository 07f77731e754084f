"""What the offline responder should have said to what the agent heard, for end-to-end tests.

Speech recognised over WebRTC is not bit-exact (Opus, the agent's resampler, and under load the
point the VAD starts at): PocketSphinx has heard "hello, who are you?" as "hello who are you",
"who are you", and "oh you" then "but you". A test that speaks to the agent therefore asserts what
holds over that whole range: everything heard is answered, once, in order, with the responder's
answer to it.
"""

from __future__ import annotations

from speech.responder import reply_to


def words(text: str) -> list[str]:
    return text.split()


def answered_in_order(heard: list[str], said: list[str]) -> bool:
    """Whether `said` (the agent's transcripts, in order; one answer may be in two, a voice's
    each) is the responder's answers to `heard` (the user's final transcripts, in order) cut into
    consecutive turns, each turn answered once."""
    return _answers(heard, words(" ".join(said)))


def _answers(heard: list[str], said: list[str]) -> bool:
    if not heard:
        return not said
    for end in range(1, len(heard) + 1):
        answer = words(reply_to(" ".join(heard[:end])))
        if said[: len(answer)] == answer and _answers(heard[end:], said[len(answer) :]):
            return True
    return False
