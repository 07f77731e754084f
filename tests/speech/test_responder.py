"""The offline responder: its answers, and that it streams them as a language model does."""

from __future__ import annotations

from datetime import datetime

import pytest
from livekit.agents import llm

from speech.responder import (
    HELLO,
    HELP,
    NOTHING_HEARD,
    WHO_AM_I,
    OfflineResponder,
    reply_to,
    spoken_time,
)

AT_3_42_PM = datetime(2026, 11, 22, 15, 42)


def fixed_clock() -> datetime:
    return AT_3_42_PM


@pytest.mark.parametrize(
    ("heard", "answer"),
    [
        ("hello", HELLO),
        ("Hi!", HELLO),
        ("hey hello", HELLO),
        ("who are you", WHO_AM_I),
        ("Who are you?", WHO_AM_I),
        ("hello who are you", f"Hello! {WHO_AM_I}"),
        ("what time is it", "It is 3:42 PM."),
        ("what time", "It is 3:42 PM."),  # all pocketsphinx may hear of it
        ("help", HELP),
        ("I need help please", HELP),
        ("who are you and what time is it", f"{WHO_AM_I} It is 3:42 PM."),
        ("the weather is nice", "You said: the weather is nice"),
        ("  spaced   out\ttext ", "You said: spaced out text"),
        ("hello there friend", "You said: hello there friend"),
        ("", NOTHING_HEARD),
        ("...", NOTHING_HEARD),
    ],
)
def test_reply_to(heard: str, answer: str) -> None:
    assert reply_to(heard, now=fixed_clock) == answer


@pytest.mark.parametrize(
    ("hour", "minute", "spoken"),
    [(0, 0, "It is 12 o'clock AM."), (12, 5, "It is 12:05 PM."), (9, 30, "It is 9:30 AM.")],
)
def test_spoken_time(hour: int, minute: int, spoken: str) -> None:
    assert spoken_time(datetime(2026, 1, 1, hour, minute)) == spoken


async def test_the_responder_streams_its_reply_to_the_last_user_message() -> None:
    responder = OfflineResponder(now=fixed_clock)
    chat = llm.ChatContext()
    chat.add_message(role="system", content="ignored")
    chat.add_message(role="user", content="what is this")
    chat.add_message(role="assistant", content="You said: what is this")
    chat.add_message(role="user", content="what time is it")

    stream = responder.chat(chat_ctx=chat)
    chunks = [chunk async for chunk in stream]
    await stream.aclose()

    texts = [c.delta.content for c in chunks if c.delta is not None and c.delta.content]
    assert "".join(texts) == "It is 3:42 PM."
    assert len(texts) == 4  # word by word, so speech can start before the reply is complete
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 4 and usage[0].prompt_tokens == 4
    assert (responder.model, responder.provider) == ("offline-responder", "avatar-agent")


async def test_with_no_user_message_it_says_it_heard_nothing() -> None:
    stream = OfflineResponder().chat(chat_ctx=llm.ChatContext())
    collected = await stream.collect()
    assert collected.text == NOTHING_HEARD
