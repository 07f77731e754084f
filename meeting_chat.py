"""A meeting's chat (LemonSlice external meetings) answered as typed messages are: one at a time,
in the order sent, none lost (chat.py). The sender is named in what the agent reads; the bot's own
messages (the avatar's, echoed back by the meeting) are not answered."""

from __future__ import annotations

from typing import Any

from livekit.agents import AgentSession

from chat import TypedMessages
from providers.lemonslice.meeting_relay import MeetingChat

# The name LemonSlice's bot takes in a meeting when it is given none (as livekit-plugins-lemonslice).
DEFAULT_BOT_NAME = "LemonSlice Avatar"


def as_user_input(chat: MeetingChat) -> str:
    return f"[{chat.sender}]: {chat.text}"


class MeetingChatReplies:
    """`on_chat` for the meeting relay. Messages that arrive before the session has started wait
    for `start`, in order."""

    def __init__(self, typed: TypedMessages, *, bot_name: str | None = None) -> None:
        self._typed = typed
        self._bot_name = (bot_name or DEFAULT_BOT_NAME).strip().casefold()
        self._session: AgentSession[Any] | None = None
        self._waiting: list[str] = []

    def on_chat(self, chat: MeetingChat) -> None:
        if chat.sender.strip().casefold() == self._bot_name:
            return
        if self._session is None:
            self._waiting.append(as_user_input(chat))
        else:
            self._typed.answer_in_line(self._session, as_user_input(chat))

    def start(self, session: AgentSession[Any]) -> None:
        self._session = session
        waiting, self._waiting = self._waiting, []
        for text in waiting:
            self._typed.answer_in_line(session, text)
