"""Typed messages (lk.chat): every one answered, in the order typed; one it cannot take is told why.

livekit-agents' default text input interrupts the agent and then asks for a reply. While the agent
says something it will not cut short (the greeting), that interrupt raises and the message is lost.
Here a typed message waits until the agent has finished what it is saying, and until the answer to
the message typed before it has been said, then gets its own answer: typing never cuts the agent
short (speaking over it does), so messages typed in a row are all answered, in order, and each
answer is made with the previous one in the conversation.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import Coroutine
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession

from held_turns import HeldTurns

logger = logging.getLogger("avatar-agent.chat")

CHAT_TOPIC = "lk.chat"

# A chat message is a question or a paragraph. 1000 characters (about 170 words) holds any of
# those, and keeps what one message costs bounded: the offline voice repeats a message it does
# not know back, which takes about a minute at this length, and a language model reads it as
# about 250 tokens.
MAX_MESSAGE_CHARS = 1000
MAX_CHARS_ATTRIBUTE = "chat.max_message_chars"  # the agent's participant attribute with the limit

NOT_TEXT = "I can only read text messages, not files. Please type your message instead."
EMPTY = "That message was empty. Type a few words and I will answer."
CONTROL_CHARACTERS = (
    "That message has characters in it that are not text, such as control codes. "
    "I read plain text only."
)
_WHITESPACE_CONTROLS = frozenset("\t\n\r")


def too_long(length: int) -> str:
    return (
        f"That message is too long: {length} characters. I read messages of up to "
        f"{MAX_MESSAGE_CHARS} characters, so please send a shorter one."
    )


def problem_with(text: str) -> str | None:
    """What the agent says instead of answering `text`, or None if it can answer it."""
    if len(text) > MAX_MESSAGE_CHARS:
        return too_long(len(text))
    if not text.strip():
        return EMPTY
    if any(
        unicodedata.category(character) in ("Cc", "Cs", "Co", "Cn")
        and character not in _WHITESPACE_CONTROLS
        for character in text
    ):
        return CONTROL_CHARACTERS
    return None


async def announce_message_limit(room: rtc.Room) -> None:
    """The limit as the agent's attribute, for frontends to say so before sending (web/static/app.js)."""
    try:
        await room.local_participant.set_attributes({MAX_CHARS_ATTRIBUTE: str(MAX_MESSAGE_CHARS)})
    except Exception as error:  # a frontend hint: the agent states the limit anyway
        logger.warning("could not publish the message length limit: %r", error)


class TypedMessages:
    """The lk.chat handlers: one message at a time, in the order the messages were sent.

    livekit-agents' own chat handler reads each message in a task of its own and hands it on when
    the reading is done, so two messages sent in a row can reach the agent in either order. Here
    each message takes its place in line when its stream opens, before it is read.
    """

    def __init__(self, held_turns: HeldTurns | None = None) -> None:
        self._held_turns = held_turns
        self._one_at_a_time = asyncio.Lock()  # FIFO: waiters get it in the order they came
        self._tasks: set[asyncio.Task[None]] = set()

    def listen(self, session: AgentSession[Any], room: rtc.Room) -> None:
        """Take lk.chat in the room: text from the user the session talks to, and files."""

        def on_text(reader: rtc.TextStreamReader, participant_identity: str) -> None:
            if not self._from_the_user(session, participant_identity):
                return
            self._in_line(self._answer(session, reader), "chat.text")

        def on_file(reader: rtc.ByteStreamReader, participant_identity: str) -> None:
            logger.info("a file sent on %s is not read (%s)", CHAT_TOPIC, reader.info.mime_type)
            self._in_line(self._answer(session, "", NOT_TEXT), "chat.not_text")

        room.register_text_stream_handler(CHAT_TOPIC, on_text)
        room.register_byte_stream_handler(CHAT_TOPIC, on_file)

    async def answer(self, session: AgentSession[Any], text: str) -> None:
        """Answer `text` once what the agent is saying, and every earlier message, is answered."""
        await self._answer(session, text)

    def answer_in_line(self, session: AgentSession[Any], text: str) -> None:
        """`answer` in the background, after every message put in line before it."""
        self._in_line(self._answer(session, text), "chat.in_line")

    @staticmethod
    def _from_the_user(session: AgentSession[Any], participant_identity: str) -> bool:
        linked = session.room_io.linked_participant  # as livekit-agents' own handler decides
        return linked is None or linked.identity == participant_identity

    def _in_line(self, answer: Coroutine[Any, Any, None], name: str) -> None:
        # A task starts running in the order it was made, and its first step is to queue for
        # the lock: the line's order is the order the streams opened.
        task = asyncio.create_task(answer, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(
        self,
        session: AgentSession[Any],
        text: str | rtc.TextStreamReader,
        problem: str | None = None,
    ) -> None:
        async with self._one_at_a_time:
            try:  # the stream's chunks wait in its reader meanwhile
                message = text if isinstance(text, str) else await text.read_all()
            except Exception as error:  # a stream cut off before its end: nothing to answer
                logger.warning("a typed message could not be read: %r", error)
                return
            if problem is None and (problem := problem_with(message)) is not None:
                logger.info("typed message not answered: %s", problem.split(".")[0])
            await self._until_the_agent_has_finished(session)
            speech = (
                session.say(problem)
                if problem is not None
                else session.generate_reply(user_input=message)
            )
            await speech  # the next message waits for this answer (awaiting never raises)

    async def _until_the_agent_has_finished(self, session: AgentSession[Any]) -> None:
        while True:
            if self._held_turns is not None:
                await self._held_turns.settled.wait()  # a turn the user spoke meanwhile goes first
            speech = session.current_speech
            if speech is None or speech.done():
                return
            await speech

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
