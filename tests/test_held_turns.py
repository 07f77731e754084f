"""Held turns and typed messages in a whole offline session, in this process: a microphone in, a
loudspeaker that plays in real time out, no room. The greeting is said whole; what the user says or
types meanwhile is answered after it; a typed message never cuts an answer short."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from assistant import Assistant
from chat import TypedMessages
from held_turns import HeldTurns
from speech.pipeline import OFFLINE_GREETING, OfflineVoice
from speech.responder import WHO_AM_I
from speech.sphinx_stt import SphinxSTT
from tests.speech.test_pipeline import RATE, Conversation, Loudspeaker, Microphone
from tests.support.spoken import spoken_at


@pytest.fixture
async def conversation() -> AsyncIterator[Conversation]:
    voice = OfflineVoice()
    session = voice.create_session()
    microphone, loudspeaker = Microphone(), Loudspeaker()
    session.input.audio = microphone
    session.output.audio = loudspeaker
    talk = Conversation(session, microphone)
    held = HeldTurns(session)
    await session.start(agent=Assistant())
    try:
        yield talk
    finally:
        await held.aclose()
        await session.aclose()
        assert isinstance(session.stt, SphinxSTT)
        await session.stt.aclose()


def loudspeaker_of(conversation: Conversation) -> Loudspeaker:
    output = conversation.session.output.audio
    assert isinstance(output, Loudspeaker)
    return output


async def start_greeting(conversation: Conversation) -> asyncio.Task[None]:
    """The greeting, said (not awaited) as the job says it; returns once it is being heard."""
    greeting = asyncio.create_task(OfflineVoice().greet(conversation.session, None))
    await asyncio.wait_for(loudspeaker_of(conversation).playing.wait(), 30)
    return greeting


async def test_a_sentence_said_during_the_greeting_is_answered_after_it(
    conversation: Conversation,
) -> None:
    greeting = await start_greeting(conversation)
    conversation.microphone.say(spoken_at("who are you", RATE))

    said = await conversation.next_message("assistant", timeout=60)
    assert said.text_content == OFFLINE_GREETING
    assert not said.interrupted
    assert conversation.microphone.said_until > 0  # the sentence was over before the greeting
    question = await conversation.next_message("user", timeout=60)
    answer = await conversation.next_message("assistant", timeout=60)
    assert question.text_content == "who are you"
    assert answer.text_content == WHO_AM_I
    await greeting


async def test_typed_messages_during_the_greeting_are_answered_after_it_in_order(
    conversation: Conversation,
) -> None:
    text_input = TypedMessages()
    greeting = await start_greeting(conversation)
    session = conversation.session
    first = asyncio.create_task(text_input.answer(session, "green turtles"))
    second = asyncio.create_task(text_input.answer(session, "orange bicycles"))

    said = [(await conversation.next_message("assistant", timeout=60)) for _ in range(3)]
    assert [m.text_content for m in said] == [
        OFFLINE_GREETING,
        "You said: green turtles",
        "You said: orange bicycles",
    ]
    assert not any(m.interrupted for m in said)
    users = [m.text_content for m in conversation.items if m.role == "user"]
    assert users == ["green turtles", "orange bicycles"]
    await asyncio.gather(greeting, first, second)


async def test_a_typed_message_does_not_cut_an_answer_short(conversation: Conversation) -> None:
    text_input = TypedMessages()
    conversation.microphone.say(spoken_at("who are you", RATE))
    await conversation.next_message("user", timeout=60)
    loudspeaker = loudspeaker_of(conversation)
    loudspeaker.playing.clear()
    await asyncio.wait_for(loudspeaker.playing.wait(), 30)  # the answer is being said

    await text_input.answer(conversation.session, "purple elephants")

    answer = await conversation.next_message("assistant", timeout=60)
    reply = await conversation.next_message("assistant", timeout=60)
    assert answer.text_content == WHO_AM_I and not answer.interrupted
    assert reply.text_content == "You said: purple elephants"
    assert not loudspeaker.cleared.is_set()


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("x" * 1001, "That message is too long: 1001 characters."),
        ("   \n ", "That message was empty."),
        ("hello\x00world", "That message has characters in it that are not text"),
    ],
)
async def test_a_message_it_cannot_take_is_answered_with_why(
    conversation: Conversation, text: str, answer: str
) -> None:
    await TypedMessages().answer(conversation.session, text)

    said = await conversation.next_message("assistant", timeout=60)
    assert said.text_content is not None and said.text_content.startswith(answer)
    assert not any(m.role == "user" for m in conversation.items)
