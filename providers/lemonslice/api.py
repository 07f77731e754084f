"""LemonSlice's avatar-session API, as the livekit-plugins-lemonslice client spoke it, sent through the
shared retry policy. See shared/seeds (the wire contract) and the notes on its weaknesses."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ..errors import ProviderProtocolError, ProviderStatusError
from ..http import FormUpload, ProviderHttp
from ..image_file import ImageFile

logger = logging.getLogger("avatar.providers.lemonslice")

PROVIDER = "lemonslice"
DEFAULT_API_URL = "https://lemonslice.com/api/liveai/sessions"
MAX_SESSION_ID = 256
# The create with an uploaded face is multipart/form-data: the JSON body in one part, the image in
# the other (the wire of livekit-plugins-lemonslice 1.8.9; see docs/lemonslice-meetings.md).
PAYLOAD_PART = "payload"
IMAGE_PART = "image"


@dataclass(frozen=True)
class LemonSliceAgent:
    """Which avatar to show: exactly one of agent_id / agent_image_url / agent_image (uploaded)."""

    agent_id: str | None = None
    agent_image_url: str | None = None
    agent_image: ImageFile | None = None
    agent_prompt: str | None = None
    agent_idle_prompt: str | None = None
    idle_timeout: int | None = None
    extra_payload: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        faces = (self.agent_id, self.agent_image_url, self.agent_image)
        if sum(face is not None for face in faces) != 1:
            raise ValueError("set exactly one of agent_id, agent_image_url or agent_image")


def read_error_text(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return None


def session_id_problem(session_id: str) -> str | None:
    """Why a session id from a reply cannot name a session in a URL path, or None.

    Everything else is sent escaped (`/`, `?`, `#`, `%` included): one path segment, whatever it says.
    Only a dot segment would still be resolved away by the URL itself.
    """
    if len(session_id) > MAX_SESSION_ID:
        return f"longer than {MAX_SESSION_ID} characters"
    if session_id in (".", ".."):
        return "a relative path step"
    if not session_id.isprintable() or any(char.isspace() for char in session_id):
        return "spaces or control characters"
    return None


@dataclass(frozen=True)
class JoinedMeeting:
    """LemonSlice's bot in an external meeting, and the relay that streams the meeting back."""

    meeting_bot_id: str
    websocket_url: str

    def __repr__(self) -> str:
        # The relay URL may carry a credential in its query; never show it.
        return f"JoinedMeeting(meeting_bot_id={self.meeting_bot_id!r})"


class LemonSliceAPI:
    def __init__(self, http: ProviderHttp, *, api_key: str, api_url: str = DEFAULT_API_URL) -> None:
        self._http = http
        self._api_key = api_key
        self._sessions_url = api_url.rstrip("/")

    def __repr__(self) -> str:
        return f"LemonSliceAPI(api_url={self._sessions_url!r})"

    @property
    def _headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-API-Key": self._api_key}

    @property
    def _upload_headers(self) -> dict[str, str]:
        # No Content-Type: aiohttp writes the multipart one, with its boundary.
        return {"X-API-Key": self._api_key}

    def session_payload(
        self,
        agent: LemonSliceAgent,
        *,
        livekit_url: str,
        livekit_token: str,
        livekit_session_id: str | None = None,
    ) -> dict[str, Any]:
        properties: dict[str, Any] = {"livekit_url": livekit_url, "livekit_token": livekit_token}
        if livekit_session_id:
            properties["livekit_session_id"] = livekit_session_id
        payload: dict[str, Any] = {"transport_type": "livekit", "properties": properties}
        optional = {
            "agent_id": agent.agent_id,
            "agent_image_url": agent.agent_image_url,
            "agent_prompt": agent.agent_prompt,
            "agent_idle_prompt": agent.agent_idle_prompt,
            "idle_timeout": agent.idle_timeout,
        }
        payload.update({key: value for key, value in optional.items() if value is not None})
        payload.update(agent.extra_payload)
        return payload

    async def start_agent_session(
        self,
        agent: LemonSliceAgent,
        *,
        livekit_url: str,
        livekit_token: str,
        livekit_session_id: str | None = None,
        deadline: float | None = None,
    ) -> str:
        """Create the avatar session; returns LemonSlice's session_id."""
        payload = self.session_payload(
            agent,
            livekit_url=livekit_url,
            livekit_token=livekit_token,
            livekit_session_id=livekit_session_id,
        )
        image = agent.agent_image
        upload = (
            None
            if image is None
            else FormUpload(
                json_part=PAYLOAD_PART,
                file_part=IMAGE_PART,
                filename=image.upload_name,
                content_type=image.content_type,
                data=image.data,
            )
        )
        reply = await self._http.post_json(
            self._sessions_url,
            payload,
            headers=self._headers if upload is None else self._upload_headers,
            operation="create session",
            creates_session=True,
            required="session_id",
            check_required=session_id_problem,
            deadline=deadline,
            upload=upload,
        )
        return str(reply["session_id"])

    def _session_url(self, session_id: str) -> str:
        if problem := session_id_problem(session_id):
            raise ValueError(f"lemonslice session id {session_id!r} is unusable: {problem}")
        return f"{self._sessions_url}/{quote(session_id, safe='')}"

    async def terminate(self, session_id: str, *, deadline: float | None = None) -> None:
        """End the session at once; LemonSlice removes its avatar from the room.

        A 404 means the session is over already (its idle timeout, its avatar gone): nothing to end.
        """
        try:
            reply = await self._http.post_json(
                f"{self._session_url(session_id)}/control",
                {"event": "terminate"},
                headers=self._headers,
                operation="terminate session",
                deadline=deadline,
            )
        except ProviderStatusError as error:
            if error.status_code != 404:
                raise
            logger.info(
                "lemonslice session %s was already over (terminate answered 404)",
                session_id,
                extra={"provider": PROVIDER, "provider_session_id": session_id},
            )
            return
        if reply.get("success") is not True:
            raise ProviderProtocolError(
                "lemonslice terminate session: the reply does not say success",
                provider=PROVIDER,
                status_code=200,
            )

    async def trigger_pose(self, session_id: str, action: str) -> None:
        """Play one of the avatar's actions (a gesture configured on the LemonSlice agent)."""
        await self._control(session_id, {"event": "pose-trigger", "pose_trigger": {"name": action}})

    async def update_agent_prompt(self, session_id: str, agent_prompt: str) -> None:
        """Change the avatar's manner (how it moves and looks while it talks) mid-call."""
        await self._control(
            session_id, {"event": "update-agent-prompt", "agent_prompt": agent_prompt}
        )

    async def update_image(self, session_id: str, image_url: str) -> None:
        """Change the avatar's face to the image at `image_url` mid-call."""
        await self._control(session_id, {"event": "update-image", "image_url": image_url})

    async def _control(self, session_id: str, event: dict[str, Any]) -> None:
        name = event["event"]
        reply = await self._http.post_json(
            f"{self._session_url(session_id)}/control",
            event,
            headers=self._headers,
            operation=f"control {name}",
        )
        if reply.get("success") is not True:
            raise ProviderProtocolError(
                f"lemonslice control {name}: the reply does not say success",
                provider=PROVIDER,
                status_code=200,
            )

    async def session_status(self, session_id: str) -> str:
        reply = await self._http.get_json(
            self._session_url(session_id), headers=self._headers, operation="session status"
        )
        status = reply.get("session_status")
        if not isinstance(status, str):
            raise ProviderProtocolError(
                "lemonslice session status: the reply has no session_status",
                provider=PROVIDER,
                status_code=200,
            )
        return status

    async def join_meeting(
        self,
        session_id: str,
        *,
        meeting_url: str,
        livekit_url: str,
        broadcast_token: str,
        bot_name: str | None = None,
        deadline: float | None = None,
    ) -> JoinedMeeting:
        """Send the session's avatar into a Zoom / Meet / Teams / Webex meeting.

        Not retried after it may have reached LemonSlice: a second join would put a second bot in.
        """
        payload: dict[str, Any] = {
            "session_id": session_id,
            "meeting_url": meeting_url,
            "livekit_url": livekit_url,
            "broadcast_token": broadcast_token,
        }
        if bot_name:
            payload["bot_name"] = bot_name
        reply = await self._http.post_json(
            f"{self._session_url(session_id)}/join-meeting",
            payload,
            headers=self._headers,
            operation="join meeting",
            creates_session=True,
            required="meeting_bot_id",
            deadline=deadline,
        )
        relay = reply.get("websocket_url")
        if not isinstance(relay, str) or not relay.startswith(("ws://", "wss://")):
            raise ProviderProtocolError(
                "lemonslice join meeting: the reply has no ws(s) websocket_url",
                provider=PROVIDER,
                status_code=200,
            )
        return JoinedMeeting(meeting_bot_id=str(reply["meeting_bot_id"]), websocket_url=relay)

    async def leave_meeting(
        self,
        session_id: str,
        meeting_bot_id: str,
        *,
        deadline: float | None = None,
    ) -> None:
        """Take the bot out of the meeting. A 404 means it is gone already (session or bot ended)."""
        try:
            await self._http.post_json(
                f"{self._session_url(session_id)}/leave-meeting",
                {"meeting_bot_id": meeting_bot_id},
                headers=self._headers,
                operation="leave meeting",
                deadline=deadline,
            )
        except ProviderStatusError as error:
            if error.status_code != 404:
                raise
            logger.info(
                "lemonslice meeting bot of session %s was already gone (leave answered 404)",
                session_id,
                extra={"provider": PROVIDER, "provider_session_id": session_id},
            )
