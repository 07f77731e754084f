"""What every avatar provider shares: token minting, speech routing, deadlines, fallback and teardown.

A provider only says how to start (and, if it can, stop) its own session; see `_start_provider` and
`_stop_provider`. Everything else — the part the livekit plugins repeat per provider — lives here once.
"""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

import aiohttp
from livekit import api, rtc
from livekit.agents import AgentSession, get_job_context
from livekit.agents.voice.avatar import AvatarSession, DataStreamAudioOutput

from .errors import AvatarJoinTimeoutError, AvatarProviderError, ProviderTimeoutError
from .token import AvatarTokenRequest, mint_avatar_token

logger = logging.getLogger("avatar.providers")


@dataclass(frozen=True)
class LiveKitCredentials:
    url: str
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)


@dataclass(frozen=True)
class AvatarOptions:
    """Provider-independent knobs of the avatar participant and its start."""

    identity: str
    token_ttl: timedelta = timedelta(minutes=10)
    start_timeout: float = 30.0
    join_timeout: float = 30.0
    stop_timeout: float = 5.0
    # Finite, so a lost lk.playback_finished after an interruption cannot wedge the turn.
    clear_buffer_timeout: float = 2.0


@dataclass(frozen=True)
class ProviderStartRequest:
    """What a provider needs to send its avatar into the room."""

    livekit_url: str
    livekit_token: str = field(repr=False)
    room_name: str
    room_sid: str | None
    deadline: float  # event-loop time by which the provider call must be done


class ProviderAvatarSession(AvatarSession[Any]):
    """An avatar session whose avatar joins the agent's room as its own participant."""

    provider_name: ClassVar[str]
    sample_rate: ClassVar[int]

    def __init__(self, *, livekit: LiveKitCredentials, options: AvatarOptions) -> None:
        super().__init__()
        self._livekit = livekit
        self._options = options
        self.session_id: str | None = None
        self._agent_audio_before: Any = None
        self._audio_output: DataStreamAudioOutput | None = None
        self._closed = False
        self._close_lock = asyncio.Lock()
        self._room_name: str | None = None

    @property
    def avatar_identity(self) -> str:
        return self._options.identity

    @property
    def provider(self) -> str:
        return self.provider_name

    @property
    def options(self) -> AvatarOptions:
        return self._options

    @abstractmethod
    async def _start_provider(self, request: ProviderStartRequest) -> str:
        """Start the provider's session; returns its session id."""

    async def _stop_provider(self, session_id: str) -> None:
        """End the provider's session, where the provider has a way to; by default nothing to do."""

    async def start(
        self, agent_session: AgentSession[Any], room: rtc.Room, *, agent_identity: str | None = None
    ) -> None:
        """Mint the avatar's token, route the agent's speech to it, and start the provider's session."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.start_timeout
        await super().start(agent_session, room)
        self._room_name = room.name

        token = mint_avatar_token(
            AvatarTokenRequest(
                room_name=room.name,
                avatar_identity=self.avatar_identity,
                agent_identity=agent_identity or _agent_identity(room),
                ttl=self._options.token_ttl,
            ),
            api_key=self._livekit.api_key,
            api_secret=self._livekit.api_secret,
        )
        # Route speech before the (slow) provider call: the output buffers until the avatar's video is up.
        self._agent_audio_before = agent_session.output.audio
        self._audio_output = DataStreamAudioOutput(
            room,
            destination_identity=self.avatar_identity,
            sample_rate=self.sample_rate,
            wait_remote_track=rtc.TrackKind.KIND_VIDEO,
            clear_buffer_timeout=self._options.clear_buffer_timeout,
        )
        agent_session.output.replace_audio_tail(self._audio_output)
        request = ProviderStartRequest(
            livekit_url=self._livekit.url,
            livekit_token=token,
            room_name=room.name,
            room_sid=await _room_sid(room),
            deadline=deadline,
        )
        try:
            async with asyncio.timeout_at(deadline):
                self.session_id = await self._start_provider(request)
        except TimeoutError:
            self.restore_agent_audio()
            raise ProviderTimeoutError(
                f"{self.provider_name} avatar start took longer than "
                f"{self._options.start_timeout:g}s",
                provider=self.provider_name,
                retryable=False,
            ) from None
        except BaseException:
            self.restore_agent_audio()
            raise
        logger.info(
            "%s avatar session started",
            self.provider_name,
            extra={"provider": self.provider_name, "session_id": self.session_id},
        )

    async def wait_for_join(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the avatar has joined and published video (default: the configured join timeout)."""
        limit = self._options.join_timeout if timeout is None else timeout
        try:
            await super().wait_for_join(timeout=limit)
        except TimeoutError:
            raise AvatarJoinTimeoutError(self.provider_name, self.avatar_identity, limit) from None

    async def start_or_fall_back(
        self, agent_session: AgentSession[Any], room: rtc.Room, *, agent_identity: str | None = None
    ) -> bool:
        """Start the avatar and wait for it; on any failure, give the agent its own voice back.

        Returns True when the avatar is in the room with video, False when the agent speaks without it.
        The user is never left in a silent room because an avatar provider failed.
        """
        try:
            await self.start(agent_session, room, agent_identity=agent_identity)
            await self.wait_for_join()
            return True
        except (AvatarProviderError, TimeoutError) as error:
            logger.error(
                "%s avatar unavailable, the agent continues with voice only: %s",
                self.provider_name,
                error,
                extra={"provider": self.provider_name, "error_type": type(error).__name__},
            )
        self.restore_agent_audio()
        await self.aclose()
        return False

    def restore_agent_audio(self) -> None:
        """Take the agent's speech back from the avatar (RoomIO then publishes it as the agent's track)."""
        if self._agent_session is None or self._audio_output is None:
            return
        if self._agent_session.output.audio is self._audio_output:
            self._agent_session.output.audio = self._agent_audio_before
        else:
            self._agent_session.output.replace_audio_tail(self._agent_audio_before)
        # DataStreamAudioOutput has no close: its task waiting for the avatar would wait forever.
        waiting: asyncio.Task[None] | None = getattr(self._audio_output, "_start_atask", None)
        if waiting is not None:
            waiting.cancel()
        self._audio_output = None

    async def aclose(self) -> None:
        """End the provider session and remove the avatar participant; safe to call more than once."""
        async with self._close_lock:
            if self._closed:
                return
            self._closed = True
            if self.session_id is not None:
                try:
                    async with asyncio.timeout(self._options.stop_timeout):
                        await self._stop_provider(self.session_id)
                except Exception as error:
                    logger.warning(
                        "could not end the %s session: %s",
                        self.provider_name,
                        error,
                        extra={"provider": self.provider_name, "session_id": self.session_id},
                    )
            if self._room_name is not None:
                await self._remove_avatar_participant(self._room_name)
            await super().aclose()
            logger.info(
                "%s avatar session closed",
                self.provider_name,
                extra={"provider": self.provider_name, "session_id": self.session_id},
            )

    async def _remove_avatar_participant(self, room_name: str) -> None:
        """Remove the avatar by room name with our own credentials.

        The base class only does so while the agent is still connected, but a job's shutdown
        callbacks run after the agent has left: an avatar with no stop endpoint (Anam) would stay
        in the room, and keep billing, until the room closes.
        """
        try:
            async with (
                asyncio.timeout(self._options.stop_timeout),
                api.LiveKitAPI(
                    self._livekit.url, self._livekit.api_key, self._livekit.api_secret
                ) as livekit_api,
            ):
                await livekit_api.room.remove_participant(
                    api.RoomParticipantIdentity(room=room_name, identity=self.avatar_identity)
                )
        except api.TwirpError as error:
            if error.code != "not_found":
                logger.warning("could not remove the avatar participant: %s", error.message)
        except (TimeoutError, OSError, aiohttp.ClientError) as error:
            logger.warning("could not remove the avatar participant: %r", error)


def _agent_identity(room: rtc.Room) -> str:
    job = get_job_context(required=False)
    if job is not None:
        return job.local_participant_identity
    return room.local_participant.identity


async def _room_sid(room: rtc.Room) -> str | None:
    try:
        async with asyncio.timeout(2.0):
            return await room.sid
    except TimeoutError:
        return None
