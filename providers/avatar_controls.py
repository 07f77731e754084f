"""What the agent's tools can make the avatar do, as the configured provider allows.

LemonSlice: its control endpoint (pose-trigger, update-agent-prompt, update-image). The local
avatar: gestures drawn in its video, asked for by RPC. Anam: nothing, so no avatar tool is offered.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from livekit import rtc

from config import Settings

from .errors import AvatarProviderError
from .local.gestures import LOCAL_GESTURES, RPC_PLAY_GESTURE
from .session import ProviderAvatarSession, describe

RPC_TIMEOUT_S = 5.0


class AvatarControlError(Exception):
    """A request to the avatar failed; the message is safe to show the LLM and the logs."""


@dataclass(frozen=True)
class AvatarAbilities:
    gestures: tuple[str, ...] = ()
    can_change_manner: bool = False
    can_change_face: bool = False


def avatar_abilities(settings: Settings) -> AvatarAbilities:
    if settings.provider == "local":
        return AvatarAbilities(gestures=LOCAL_GESTURES)
    if settings.provider == "lemonslice":
        return AvatarAbilities(
            gestures=settings.lemonslice_actions, can_change_manner=True, can_change_face=True
        )
    return AvatarAbilities()


@runtime_checkable
class ControllableAvatar(Protocol):
    """A provider session with a control API of its own (LemonSlice)."""

    async def play_gesture(self, action: str) -> None: ...

    async def change_manner(self, prompt: str) -> None: ...

    async def change_face(self, image_url: str) -> None: ...


class LiveAvatar(Protocol):
    @property
    def live_avatar(self) -> ProviderAvatarSession | None: ...


class AvatarControls:
    """The avatar in the room now, driven by the job's tools. Every failure is an AvatarControlError."""

    def __init__(self, room: rtc.Room, avatar: LiveAvatar, abilities: AvatarAbilities) -> None:
        self._room = room
        self._avatar = avatar
        self.abilities = abilities

    async def play_gesture(self, name: str) -> None:
        if name not in self.abilities.gestures:
            raise AvatarControlError(
                f"unknown gesture {name!r}; known: {', '.join(self.abilities.gestures)}"
            )
        session = self._live()
        if isinstance(session, ControllableAvatar):
            await self._provider_call(session.play_gesture(name))
            return
        try:
            await self._room.local_participant.perform_rpc(
                destination_identity=session.identity,
                method=RPC_PLAY_GESTURE,
                payload=name,
                response_timeout=RPC_TIMEOUT_S,
            )
        except rtc.RpcError as error:
            raise AvatarControlError(f"the avatar did not play it: {error.message}") from None

    async def change_manner(self, prompt: str) -> None:
        await self._provider_call(self._controllable().change_manner(prompt))

    async def change_face(self, image_url: str) -> None:
        await self._provider_call(self._controllable().change_face(image_url))

    def _live(self) -> ProviderAvatarSession:
        session = self._avatar.live_avatar
        if session is None:
            raise AvatarControlError("the avatar is not in the room right now")
        return session

    def _controllable(self) -> ControllableAvatar:
        session = self._live()
        if not isinstance(session, ControllableAvatar):
            raise AvatarControlError("this avatar cannot do that")
        return session

    @staticmethod
    async def _provider_call(call: Awaitable[None]) -> None:
        try:
            await call
        except AvatarProviderError as error:
            raise AvatarControlError(f"the avatar provider refused: {describe(error)}") from None
