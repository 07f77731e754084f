"""The assistant of assistant.py with the offline voice's responder, in an AgentSession with no
room: a tool added the way the README says is offered to the LLM and called by it, through the
framework's own tool execution; a failing tool is told to the user and the conversation goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from livekit import rtc
from livekit.agents import AgentSession, ToolError, function_tool
from livekit.agents.voice.run_result import RunResult

from assistant import Assistant
from config import Settings
from providers.avatar_controls import AvatarControls, avatar_abilities
from speech.responder import OfflineResponder


class AssistantWithADoor(Assistant):
    """The README's "add a tool" path: a @function_tool method on the assistant."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[str] = []

    @function_tool()
    async def open_the_door(self) -> str:
        """Open the front door when the user asks for it."""
        self.opened.append("front")
        return "The front door is open."

    @function_tool()
    async def lock_the_door(self) -> str:
        """Lock the front door."""
        raise ToolError("the lock is jammed")


@pytest.fixture
async def session() -> AsyncIterator[AgentSession[None]]:
    async with AgentSession[None](llm=OfflineResponder()) as session:
        yield session


async def test_a_tool_added_to_the_assistant_is_offered_and_called(
    session: AgentSession[None],
) -> None:
    assistant = AssistantWithADoor()
    await session.start(assistant)
    result: RunResult[None] = await session.run(user_input="please open the door")
    result.expect.next_event().is_function_call(name="open_the_door")
    result.expect.next_event().is_function_call_output(output="The front door is open.")
    result.expect.next_event().is_message(role="assistant")
    assert assistant.opened == ["front"]


async def test_a_tool_error_is_told_and_the_conversation_goes_on(
    session: AgentSession[None],
) -> None:
    await session.start(AssistantWithADoor())
    failed: RunResult[None] = await session.run(user_input="lock the door")
    failed.expect.next_event().is_function_call(name="lock_the_door")
    failed.expect.next_event().is_function_call_output(is_error=True)
    told = failed.expect.next_event().is_message(role="assistant").event().item
    assert "the lock is jammed" in (told.text_content or "")
    answered: RunResult[None] = await session.run(user_input="who are you")
    answered.expect.next_event().is_message(role="assistant")


async def test_the_assistant_without_an_avatar_offers_only_its_own_tools() -> None:
    assert sorted(tool.id for tool in Assistant().tools) == ["current_date"]


class NoAvatarInTheRoom:
    live_avatar = None


@pytest.mark.parametrize(
    ("provider", "settings", "offered"),
    [
        ("anam", {}, []),
        ("local", {}, ["play_gesture"]),
        ("lemonslice", {}, ["change_face", "change_manner"]),
        (
            "lemonslice",
            {"lemonslice_actions": "wave,bow"},
            ["change_face", "change_manner", "play_gesture"],
        ),
    ],
)
def test_the_avatar_tools_offered_are_the_ones_its_provider_can_do(
    provider: str, settings: dict[str, str], offered: list[str]
) -> None:
    abilities = avatar_abilities(Settings.model_validate({"avatar_provider": provider, **settings}))
    controls = AvatarControls(rtc.Room(), NoAvatarInTheRoom(), abilities)
    tools = Assistant(avatar=controls).tools
    assert sorted(tool.id for tool in tools) == sorted(["current_date", *offered])


async def test_a_gesture_with_no_avatar_in_the_room_is_a_tool_error_not_a_crash(
    session: AgentSession[None],
) -> None:
    abilities = avatar_abilities(Settings.model_validate({"avatar_provider": "local"}))
    await session.start(
        Assistant(avatar=AvatarControls(rtc.Room(), NoAvatarInTheRoom(), abilities))
    )
    result: RunResult[None] = await session.run(user_input="wave")
    result.expect.next_event().is_function_call(name="play_gesture", arguments={"gesture": "wave"})
    result.expect.next_event().is_function_call_output(is_error=True)
    told = result.expect.next_event().is_message(role="assistant").event().item
    assert "not in the room" in (told.text_content or "")
