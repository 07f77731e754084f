"""The tools that move the avatar, offered to the LLM only where the avatar's provider can do them.

Each one goes through the provider's own client (the same HTTP client, retry policy and typed
errors as starting the avatar) or, for the local avatar, an RPC to it. A failure comes back to the
LLM as a `ToolError`: it can tell the user, and the conversation goes on.
"""

from __future__ import annotations

from typing import Any

from livekit.agents import llm

from providers.avatar_controls import AvatarControlError, AvatarControls

GESTURE_TOOL = "play_gesture"
MANNER_TOOL = "change_manner"
FACE_TOOL = "change_face"


def avatar_tools(controls: AvatarControls) -> list[llm.Tool | llm.Toolset]:
    abilities = controls.abilities
    tools: list[llm.Tool | llm.Toolset] = []
    if abilities.gestures:
        tools.append(_gesture_tool(controls, abilities.gestures))
    if abilities.can_change_manner:
        tools.append(_manner_tool(controls))
    if abilities.can_change_face:
        tools.append(_face_tool(controls))
    return tools


def _gesture_tool(controls: AvatarControls, gestures: tuple[str, ...]) -> llm.Tool:
    async def play_gesture(raw_arguments: dict[str, Any]) -> str:
        gesture = str(raw_arguments.get("gesture", ""))
        await _tool_call(controls.play_gesture(gesture))
        return f"The avatar plays the gesture {gesture}."

    return llm.function_tool(
        play_gesture,
        raw_schema={
            "name": GESTURE_TOOL,
            "description": "Make the avatar play a gesture, such as waving, when it fits what you say.",
            "parameters": {
                "type": "object",
                "properties": {"gesture": {"type": "string", "enum": list(gestures)}},
                "required": ["gesture"],
            },
        },
    )


def _manner_tool(controls: AvatarControls) -> llm.Tool:
    async def change_manner(manner: str) -> str:
        """Change how the avatar moves and looks while it talks, for the rest of the call.

        Args:
            manner: A short description, such as "calm and smiling" or "excited, big gestures".
        """
        await _tool_call(controls.change_manner(manner))
        return "The avatar's manner has changed."

    return llm.function_tool(change_manner, name=MANNER_TOOL)


def _face_tool(controls: AvatarControls) -> llm.Tool:
    async def change_face(image_url: str) -> str:
        """Change the avatar's face to the picture at an https URL the user gave.

        Args:
            image_url: The picture's URL.
        """
        await _tool_call(controls.change_face(image_url))
        return "The avatar's face has changed."

    return llm.function_tool(change_face, name=FACE_TOOL)


async def _tool_call(call: Any) -> None:
    try:
        await call
    except AvatarControlError as error:
        raise llm.ToolError(str(error)) from None
