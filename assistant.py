"""The assistant: what it is told, and the tools it can call. Make the agent yours here.

Both voices use it: the cloud voice's LLM calls its tools, and so does the offline voice's
responder (speech/responder.py) when a typed or spoken message names a tool, so you can try a
new tool with no account.

To add a tool: an async method with `@function_tool()`, a docstring the LLM reads to decide when
to call it, type hints for its arguments. Raise `ToolError("...")` to tell the LLM it failed.
"""

from __future__ import annotations

from datetime import datetime

from livekit.agents import Agent, function_tool

from avatar_tools import avatar_tools
from config import DEFAULT_GREETING, DEFAULT_INSTRUCTIONS
from providers.avatar_controls import AvatarControls


class Assistant(Agent):
    def __init__(
        self,
        *,
        instructions: str = DEFAULT_INSTRUCTIONS,
        greeting: str = DEFAULT_GREETING,
        avatar: AvatarControls | None = None,
    ) -> None:
        # The avatar's tools (gestures, manner, face) are there only if its provider has them.
        super().__init__(
            instructions=instructions, tools=avatar_tools(avatar) if avatar is not None else []
        )
        # How the agent opens the call: the cloud voice's LLM words the greeting from this. The
        # offline voice has no LLM: it says a fixed line (speech/pipeline.py, OFFLINE_GREETING).
        self.greeting = greeting

    @function_tool()
    async def current_date(self) -> str:
        """The date today, for when the user asks what day it is."""
        return datetime.now().strftime("It is %A, %B %d, %Y.").replace(" 0", " ")
