"""Meeting chat as the agent reads it: the sender named, the bot's own messages left out, and
messages from before the session started kept, in order, for when it has."""

from __future__ import annotations

from typing import Any, cast

from livekit.agents import AgentSession

from chat import TypedMessages
from meeting_chat import DEFAULT_BOT_NAME, MeetingChatReplies
from providers.lemonslice.meeting_relay import MeetingChat


class LineOfMessages(TypedMessages):
    """What was put in line, instead of answering it (the answering is tests/test_meeting.py's)."""

    def __init__(self) -> None:
        super().__init__()
        self.line: list[tuple[object, str]] = []

    def answer_in_line(self, session: AgentSession[Any], text: str) -> None:
        self.line.append((session, text))


SESSION = cast(AgentSession[Any], object())


def test_messages_wait_for_the_session_in_order_and_the_bot_is_not_answered() -> None:
    typed = LineOfMessages()
    replies = MeetingChatReplies(typed, bot_name="Ava")
    replies.on_chat(MeetingChat("Alice", "who are you"))
    replies.on_chat(MeetingChat(" ava ", "I am Ava"))  # the bot's own message, echoed back
    replies.on_chat(MeetingChat("Bob", "and you?", to="Ava"))
    assert typed.line == []

    replies.start(SESSION)
    replies.on_chat(MeetingChat("Carol", "hi"))
    assert typed.line == [
        (SESSION, "[Alice]: who are you"),
        (SESSION, "[Bob]: and you?"),
        (SESSION, "[Carol]: hi"),
    ]


def test_without_a_bot_name_the_default_name_is_the_bot() -> None:
    typed = LineOfMessages()
    replies = MeetingChatReplies(typed)
    replies.start(SESSION)
    replies.on_chat(MeetingChat(DEFAULT_BOT_NAME.upper(), "hello"))
    replies.on_chat(MeetingChat("Someone", "hello"))
    assert typed.line == [(SESSION, "[Someone]: hello")]
