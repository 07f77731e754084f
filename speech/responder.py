"""An offline stand-in for the language model: deterministic answers to a few phrases, an echo for the rest.

It is an `llm.LLM`, so the session treats it as any model: replies are streamed as chat chunks, spoken
by the TTS, published as transcriptions, interrupted, and counted in the session's metrics. It says what
it is rather than pretending to understand.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Never

from livekit.agents import llm
from livekit.agents.llm.tool_context import FunctionTool, RawFunctionTool
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

MODEL_NAME = "offline-responder"
PROVIDER_NAME = "avatar-agent"

HELLO = (
    "Hello! I am the offline voice of this avatar agent. "
    "Ask me who I am, what time it is, or for help."
)
WHO_AM_I = (
    "I am an avatar voice agent running offline, without a language model. "
    "I know a few phrases, and I repeat everything else back to you."
)
HELP = (
    "For a full conversation, set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET to a LiveKit "
    "Cloud project and restart me. For a provider avatar, also set LEMONSLICE_API_KEY or ANAM_API_KEY."
)
NOTHING_HEARD = "I did not catch that. Could you say it again?"

# The phrases the responder answers, for a speech recogniser that listens for them first.
INTENT_PHRASES: tuple[str, ...] = (
    "hello",
    "hi",
    "hey",
    "who are you",
    "what time is it",
    "what time",
    "help",
)


GREETINGS = frozenset({"hello", "hi", "hey"})


@dataclass(frozen=True)
class Intents:
    hello: bool
    who: bool
    time: bool
    help: bool


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _has_phrase(words: list[str], phrase: str) -> bool:
    wanted = phrase.split()
    return any(words[i : i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1))


def find_intents(text: str) -> Intents:
    words = _words(text)
    return Intents(
        hello=any(word in GREETINGS for word in words),
        who=_has_phrase(words, "who are you"),
        time=_has_phrase(words, "what time"),
        help="help" in words,
    )


def spoken_time(now: datetime) -> str:
    hour = now.hour % 12 or 12
    clock = f"{hour} o'clock" if now.minute == 0 else f"{hour}:{now.minute:02d}"
    return f"It is {clock} {'AM' if now.hour < 12 else 'PM'}."


def reply_to(text: str, *, now: Callable[[], datetime] = datetime.now) -> str:
    """What the responder says to `text` (a transcript or a typed message)."""
    said = " ".join(text.split())
    words = _words(said)
    if not words:
        return NOTHING_HEARD
    intents = find_intents(said)
    answers = []
    if intents.who:
        answers.append(WHO_AM_I)
    if intents.time:
        answers.append(spoken_time(now()))
    if intents.help:
        answers.append(HELP)
    if answers:
        return " ".join(["Hello!", *answers] if intents.hello else answers)
    if all(word in GREETINGS for word in words):
        return HELLO
    return f"You said: {said}"


def tool_call_for(text: str, tools: list[llm.Tool]) -> llm.FunctionToolCall | None:
    """The tool a message asks for, as a language model would call it, or None.

    A word that is one of a tool's allowed values calls it with that value ("wave" calls
    play_gesture with gesture "wave"); a tool's name said as words ("current date") calls it with
    no arguments.
    """
    words = _words(text)
    for tool in tools:
        if isinstance(tool, RawFunctionTool):
            name, arguments = tool.info.name, _choice_from_words(tool.info.raw_schema, words)
        elif isinstance(tool, FunctionTool):
            name, arguments = tool.info.name, None
        else:
            continue
        if arguments is None and _has_phrase(words, name.replace("_", " ")):
            arguments = {}
        if arguments is not None:
            return llm.FunctionToolCall(
                name=name,
                arguments=json.dumps(arguments),
                call_id=f"offline-{uuid.uuid4().hex[:8]}",
            )
    return None


def _choice_from_words(raw_schema: dict[str, Any], words: list[str]) -> dict[str, str] | None:
    parameters = raw_schema.get("parameters", {})
    required = parameters.get("required", [])
    if len(required) != 1:
        return None
    allowed = parameters.get("properties", {}).get(required[0], {}).get("enum", [])
    said = next((word for word in words if word in allowed), None)
    return {required[0]: said} if said is not None else None


def reply_to_tool(output: llm.FunctionCallOutput) -> str:
    """What the responder says once a tool it called has answered."""
    if output.is_error:
        return f"I could not do that: {output.output}"
    return output.output or "Done."


def last_user_text(chat_ctx: llm.ChatContext) -> str:
    for item in reversed(chat_ctx.items):
        if item.type == "message" and item.role == "user":
            return item.text_content or ""
    return ""


class OfflineResponder(llm.LLM[Never]):
    """Answers the user's last message with `reply_to`; no network, no model, same answer every time."""

    def __init__(self, *, now: Callable[[], datetime] = datetime.now) -> None:
        super().__init__()
        self._now = now

    @property
    def model(self) -> str:
        return MODEL_NAME

    @property
    def provider(self) -> str:
        return PROVIDER_NAME

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> ResponderStream:
        tools = tools or []
        last = chat_ctx.items[-1] if chat_ctx.items else None
        answer: str | llm.FunctionToolCall | None = None
        if isinstance(last, llm.FunctionCallOutput):
            answer = reply_to_tool(last)  # the framework ran the tool we called: say how it went
        else:
            answer = tool_call_for(last_user_text(chat_ctx), tools)
        if answer is None:
            answer = reply_to(last_user_text(chat_ctx), now=self._now)
        return ResponderStream(
            self, answer, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options
        )


class ResponderStream(llm.LLMStream):
    def __init__(
        self,
        responder: OfflineResponder,
        answer: str | llm.FunctionToolCall,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(responder, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._answer = answer

    async def _run(self) -> None:
        chunk_id = f"offline-{uuid.uuid4().hex[:12]}"
        if isinstance(self._answer, llm.FunctionToolCall):
            # A tool call, as a model sends one: the framework runs the tool and asks us again.
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id=chunk_id,
                    delta=llm.ChoiceDelta(role="assistant", tool_calls=[self._answer]),
                )
            )
            return
        self._stream_words(chunk_id, self._answer)

    def _stream_words(self, chunk_id: str, reply: str) -> None:
        # Word by word, as a model streams: the TTS can start on the first sentence.
        for index, word in enumerate(reply.split(" ")):
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id=chunk_id,
                    delta=llm.ChoiceDelta(
                        role="assistant", content=word if index == 0 else f" {word}"
                    ),
                )
            )
        prompt_tokens = len(last_user_text(self._chat_ctx).split())
        completion_tokens = len(reply.split())
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id=chunk_id,
                usage=llm.CompletionUsage(
                    completion_tokens=completion_tokens,
                    prompt_tokens=prompt_tokens,
                    total_tokens=prompt_tokens + completion_tokens,
                ),
            )
        )
