"""A strict emulator of LemonSlice's live avatar session API (see shared/notes/provider-apis.md).

Routes (names for `inject` / `requests_for`):
  "create":  POST {sessions_url}                  -> 201 {"session_id"}
             (JSON, or multipart/form-data: part "payload" the JSON body, part "image" a PNG/JPEG face)
  "control": POST {sessions_url}/{id}/control     -> {"success": true}
  "status":  GET  {sessions_url}/{id}             -> {"session_status"}
  "join_meeting":  POST {sessions_url}/{id}/join-meeting  -> {"meeting_bot_id", "websocket_url"}
  "leave_meeting": POST {sessions_url}/{id}/leave-meeting -> {"success": true}
  (not a provider route) GET /meeting-relay/{bot_id}: the meeting's audio and chat, a WebSocket
Every route needs the X-API-Key header. Errors are {"detail": "<text>"}.
"""

from __future__ import annotations

import hmac
import uuid
from typing import Any, Final

from aiohttp import web
from yarl import URL

from ._checks import (
    FormPart,
    Rejected,
    check_bool,
    check_choice,
    check_int,
    check_keys,
    check_number,
    check_parts,
    check_str,
    check_token,
    check_url,
    content_type_of,
    json_object_body,
    json_part,
    multipart_form,
    sub_object,
)
from ._meetings import EmulatedMeeting, broadcast_grants, validate_join
from ._records import RecordedRequest
from ._server import EmulatorServer, Reply
from ._sessions import LIVE_STATUSES, AvatarLauncher, EmulatedSession, Provider, UploadedImage

SESSIONS_PATH: Final = "/api/liveai/sessions"
DEFAULT_SAMPLE_RATE: Final = 16000
SAMPLE_RATES: Final = (16000, 22050, 24000, 44100, 48000)
MODELS: Final = ("flash", "lite", "pro")
ASPECT_RATIOS: Final = ("1x1", "2x3", "9x16")
CONTROL_EVENTS: Final = (
    "terminate",
    "update-image",
    "update-agent-prompt",
    "update-idle-prompt",
    "pose-trigger",
)
LIVEKIT_URL_SCHEMES: Final = ("ws", "wss", "http", "https")
# The multipart create: the JSON body as one part, the face as the other.
PAYLOAD_PART: Final = "payload"
IMAGE_PART: Final = "image"
# What each image type's file starts with (the uploaded bytes must be what their part declares).
IMAGE_SIGNATURES: Final = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}

_OPTIONAL_TOP_LEVEL: Final = (
    "agent_id",
    "agent_image_url",
    "agent_prompt",
    "agent_idle_prompt",
    "idle_timeout",
    "response_done_timeout",
    "model",
    "aspect_ratio",
    "simulcast",
    "audio_sample_rate",
)


class LemonSliceEmulator(EmulatorServer):
    provider: Provider = "lemonslice"

    def __init__(
        self,
        api_key: str = "lemonslice-test-key",
        *,
        avatar_launcher: AvatarLauncher | None = None,
        require_jwt_token: bool = True,
        latency: float = 0.0,
        connect_latency: float = 0.0,
    ) -> None:
        super().__init__(
            routes=("create", "control", "status", "join_meeting", "leave_meeting"),
            avatar_launcher=avatar_launcher,
            latency=latency,
            connect_latency=connect_latency,
        )
        self._api_key = api_key
        self._require_jwt = require_jwt_token
        self.add_route("POST", SESSIONS_PATH, "create", self._create)
        self.add_route("POST", SESSIONS_PATH + "/{session_id}/control", "control", self._control)
        self.add_route("GET", SESSIONS_PATH + "/{session_id}", "status", self._status)
        self._meetings: dict[str, EmulatedMeeting] = {}
        self._add_meeting_routes()

    @property
    def sessions_url(self) -> str:
        """The full create URL: what the client is configured with as its API URL."""
        return self.url + SESSIONS_PATH

    def worker_settings(
        self, agent_id: str = "agent-emulated", *, image_path: str | None = None
    ) -> dict[str, str]:
        """The variables that point a worker (ours or the reference) at this emulator.

        With `image_path`, the worker uploads that file as the face instead of naming an agent id.
        """
        face = (
            {"LEMONSLICE_AGENT_IMAGE_PATH": image_path}
            if image_path is not None
            else {"LEMONSLICE_AGENT_ID": agent_id}
        )
        return {
            "AVATAR_PROVIDER": "lemonslice",
            "LEMONSLICE_API_KEY": self._api_key,
            "LEMONSLICE_API_URL": self.sessions_url,
            **face,
        }

    # -- external meetings ------------------------------------------------------------------------

    @property
    def meetings(self) -> tuple[EmulatedMeeting, ...]:
        """Every meeting a bot joined, in order, including those it left."""
        return tuple(self._meetings.values())

    def meeting(self, meeting_bot_id: str) -> EmulatedMeeting:
        return self._meetings[meeting_bot_id]

    async def aclose(self) -> None:
        for meeting in self._meetings.values():
            await meeting.drop_relay()
        await super().aclose()

    def _add_meeting_routes(self) -> None:
        self.add_route(
            "POST", SESSIONS_PATH + "/{session_id}/join-meeting", "join_meeting", self._join_meeting
        )
        self.add_route(
            "POST",
            SESSIONS_PATH + "/{session_id}/leave-meeting",
            "leave_meeting",
            self._leave_meeting,
        )
        self._app.router.add_get("/meeting-relay/{meeting_bot_id}", self._meeting_relay)

    async def _join_meeting(self, request: web.Request, record: RecordedRequest) -> Reply:
        self._authenticate(record)
        session = self._find_session(request)
        body = json_object_body(record)
        validate_join(body, session.session_id, require_jwt=self._require_jwt)
        grants = broadcast_grants(body["broadcast_token"]) if self._require_jwt else {}
        if session.status not in LIVE_STATUSES:  # a queued session may join: its avatar follows
            raise Rejected(409, "session is not active")
        if any(m.present and m.session_id == session.session_id for m in self._meetings.values()):
            raise Rejected(409, "session is already in a meeting")
        meeting = EmulatedMeeting(
            meeting_bot_id=f"bot-{uuid.uuid4()}",
            session_id=session.session_id,
            meeting_url=body["meeting_url"],
            bot_name=body.get("bot_name"),
            livekit_url=body["livekit_url"],
            broadcast_grants=grants,
        )
        self._meetings[meeting.meeting_bot_id] = meeting
        relay = URL(self.url).with_scheme("ws") / "meeting-relay" / meeting.meeting_bot_id
        return Reply(
            200,
            {"meeting_bot_id": meeting.meeting_bot_id, "websocket_url": str(relay)},
            success_field="meeting_bot_id",
        )

    async def _leave_meeting(self, request: web.Request, record: RecordedRequest) -> Reply:
        self._authenticate(record)
        session = self._find_session(request)
        body = json_object_body(record)
        check_keys(body, where="", required=("meeting_bot_id",))
        bot_id = check_str(body, "meeting_bot_id", where="")
        meeting = self._meetings.get(bot_id)
        if meeting is None or meeting.session_id != session.session_id or not meeting.present:
            raise Rejected(404, "meeting bot not found")
        meeting.present = False
        meeting.notify()
        await meeting.drop_relay()
        return Reply(200, {"success": True}, success_field="success")

    async def _meeting_relay(self, request: web.Request) -> web.StreamResponse:
        meeting = self._meetings.get(request.match_info["meeting_bot_id"])
        if meeting is None or not meeting.present:
            raise web.HTTPNotFound()
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        meeting.sockets.append(socket)
        meeting.relay_connections += 1
        meeting.notify()
        try:
            async for _ in socket:
                pass  # the agent sends nothing on the relay
        finally:
            meeting.sockets.remove(socket)
            meeting.notify()
        return socket

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"detail": message}

    async def _create(self, request: web.Request, record: RecordedRequest) -> Reply:
        self._authenticate(record)
        image: UploadedImage | None = None
        kind = content_type_of(record)
        if kind == "multipart/form-data":
            parts = multipart_form(record)
            check_parts(parts, required=(PAYLOAD_PART, IMAGE_PART))
            body = json_part(parts[PAYLOAD_PART])
            image = _uploaded_image(parts[IMAGE_PART])
        elif kind == "application/json":
            body = json_object_body(record)
        else:
            raise Rejected(400, "Content-Type must be application/json or multipart/form-data")
        properties = _validate_create(body, require_jwt=self._require_jwt, image=image is not None)
        session = self.create_session(
            record,
            config=body,
            livekit_url=properties["livekit_url"],
            livekit_token=properties["livekit_token"],
            sample_rate=body.get("audio_sample_rate", DEFAULT_SAMPLE_RATE),
        )
        session.image = image
        return Reply(201, {"session_id": session.session_id}, success_field="session_id")

    async def _control(self, request: web.Request, record: RecordedRequest) -> Reply:
        self._authenticate(record)
        session = self._find_session(request)
        body = json_object_body(record)
        if "event" not in body:
            raise Rejected(400, "missing required field 'event'")
        event = check_choice(body, "event", CONTROL_EVENTS, where="")
        if event == "terminate":
            check_keys(body, where="", required=("event",))
            await self.terminate_session(session)
        else:
            _validate_avatar_control(event, body)
        return Reply(200, {"success": True}, success_field="success")

    async def _status(self, request: web.Request, record: RecordedRequest) -> Reply:
        self._authenticate(record)
        session = self._find_session(request)
        return Reply(200, {"session_status": session.status}, success_field="session_status")

    def _authenticate(self, record: RecordedRequest) -> None:
        given = record.headers.get("X-API-Key")
        if not given:
            raise Rejected(401, "missing X-API-Key header")
        if not hmac.compare_digest(given.encode(), self._api_key.encode()):
            raise Rejected(401, "invalid API key")

    def _find_session(self, request: web.Request) -> EmulatedSession:
        try:
            return self.session(request.match_info["session_id"])
        except KeyError:
            raise Rejected(404, "session not found") from None


def _validate_avatar_control(event: str, body: dict[str, Any]) -> None:
    """The control events that change the avatar mid-call, as the OpenAPI schema has them."""
    if event == "pose-trigger":
        check_keys(body, where="", required=("event", "pose_trigger"))
        pose = sub_object(body, "pose_trigger", where="")
        check_keys(pose, where="pose_trigger", required=("name",))
        check_str(pose, "name", where="pose_trigger")
    elif event == "update-agent-prompt":
        check_keys(body, where="", required=("event", "agent_prompt"))
        check_str(body, "agent_prompt", where="", non_empty=False)
    elif event == "update-idle-prompt":
        check_keys(body, where="", required=("event", "idle_prompt"))
        check_str(body, "idle_prompt", where="", non_empty=False)
    elif event == "update-image":
        check_keys(body, where="", required=("event",), optional=("image_url", "image_base64"))
        if ("image_url" in body) == ("image_base64" in body):
            raise Rejected(400, "set exactly one of image_url or image_base64")
        if "image_url" in body:
            check_url(body, "image_url", ("http", "https"), where="")
        else:
            check_str(body, "image_base64", where="")


def _uploaded_image(part: FormPart) -> UploadedImage:
    """The face part of a multipart create: a PNG or JPEG file whose bytes are what it declares."""
    if part.filename is None or not part.filename.strip():
        raise Rejected(400, f"part {IMAGE_PART!r} must be a file (with a filename)")
    signature = IMAGE_SIGNATURES.get(part.content_type or "")
    if signature is None:
        allowed = " or ".join(IMAGE_SIGNATURES)
        raise Rejected(400, f"part {IMAGE_PART!r} must have Content-Type {allowed}")
    if not part.data.startswith(signature):
        raise Rejected(400, f"part {IMAGE_PART!r} is not a {part.content_type} image")
    assert part.content_type is not None
    return UploadedImage(filename=part.filename, content_type=part.content_type, data=part.data)


def _validate_create(body: dict[str, Any], *, require_jwt: bool, image: bool) -> dict[str, Any]:
    """Validate a create body; returns its `properties` object.

    `image`: the body came as the payload part of a multipart create with an uploaded face, which
    then takes the place of agent_id / agent_image_url (neither may be given beside it).
    """
    check_keys(
        body, where="", required=("transport_type", "properties"), optional=_OPTIONAL_TOP_LEVEL
    )
    if body["transport_type"] != "livekit":
        raise Rejected(400, "'transport_type' must be 'livekit'")

    properties = sub_object(body, "properties", where="")
    where = "properties"
    check_keys(
        properties,
        where=where,
        required=("livekit_url", "livekit_token"),
        optional=("livekit_session_id",),
    )
    check_url(properties, "livekit_url", LIVEKIT_URL_SCHEMES, where=where)
    check_token(properties, "livekit_token", where=where, require_jwt=require_jwt)
    if "livekit_session_id" in properties:
        check_str(properties, "livekit_session_id", where=where)

    has_id, has_image = "agent_id" in body, "agent_image_url" in body
    if sum((has_id, has_image, image)) > 1:
        raise Rejected(400, "Only one of agent_id, agent_image_url or image can be provided")
    if not has_id and not has_image and not image:
        raise Rejected(400, "Missing agent_id or agent_image_url")
    if has_id:
        check_str(body, "agent_id", where="")
    elif has_image:
        check_url(body, "agent_image_url", ("http", "https"), where="")

    for key in ("agent_prompt", "agent_idle_prompt"):
        if key in body:
            check_str(body, key, where="", non_empty=False)
    if "idle_timeout" in body:
        check_int(body, "idle_timeout", where="")
    if "response_done_timeout" in body:
        check_number(body, "response_done_timeout", where="")
    if "model" in body:
        check_choice(body, "model", MODELS, where="")
    if "aspect_ratio" in body:
        check_choice(body, "aspect_ratio", ASPECT_RATIOS, where="")
    if "simulcast" in body:
        check_bool(body, "simulcast", where="")
    if "audio_sample_rate" in body:
        check_choice(body, "audio_sample_rate", SAMPLE_RATES, where="")
    return properties
