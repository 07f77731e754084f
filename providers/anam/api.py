"""Anam's session API, sent through the shared retry policy, in either of its two flows:

- two-step (the seed's contract): a session token with the API key, then the engine session with that
  token (`create_session_token` + `start_engine_session`);
- direct (Anam's published API, and livekit-plugins-anam 1.8.9): the engine session straight from the
  API key and the same persona body, one round trip fewer (`start_session_direct`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin

from ..http import ProviderHttp

PROVIDER = "anam"
DEFAULT_API_URL = "https://api.anam.ai"
LLM_ID = "CUSTOMER_CLIENT_V1"  # the avatar only speaks; our agent is the brain
# 429s that waiting does not lift (the SDK's own wording).
HARD_LIMIT_MARKERS = ("concurrent session limit", "spend cap", "usage limit")
ENGINE_SESSION_PATH = "/v1/engine/session"

SessionFlow = Literal["two_step", "direct"]


@dataclass(frozen=True)
class DirectorNotes:
    """How expressive the avatar is; unset fields are left out so Anam keeps its model's defaults."""

    expressivity: float | None = None  # 0..1
    preset_style: str | None = None  # never together with custom_style_prompt
    custom_style_prompt: str | None = None

    def wire(self) -> dict[str, Any]:
        fields = {
            "expressivity": self.expressivity,
            "presetStyle": self.preset_style,
            "customStylePrompt": self.custom_style_prompt,
        }
        return {name: value for name, value in fields.items() if value is not None}


@dataclass(frozen=True)
class SessionOptions:
    """The session's output: its video size (width and height together) and the AI disclosure mark."""

    video_width: int | None = None
    video_height: int | None = None
    show_ai_avatar_disclosure: bool | None = None

    def wire(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.video_width is not None and self.video_height is not None:
            options["videoWidth"] = self.video_width
            options["videoHeight"] = self.video_height
        if self.show_ai_avatar_disclosure is not None:
            options["showAIAvatarDisclosure"] = self.show_ai_avatar_disclosure
        return options


@dataclass(frozen=True)
class PersonaConfig:
    name: str
    avatar_id: str
    avatar_model: str | None = None
    director_notes: DirectorNotes | None = None
    session_options: SessionOptions | None = None
    max_session_length_seconds: int | None = None  # Anam ends the session this long after its start


@dataclass(frozen=True)
class EngineSession:
    session_id: str
    engine_host: str | None
    details: dict[str, Any]


def read_error_text(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    parts = [body.get("error"), body.get("message")]
    text = ": ".join(part for part in parts if isinstance(part, str) and part)
    return text or None


def hard_limit(text: str | None) -> str | None:
    """Which hard limit a 429's text names (one of `HARD_LIMIT_MARKERS`), if any."""
    lowered = (text or "").lower()
    return next((marker for marker in HARD_LIMIT_MARKERS if marker in lowered), None)


def is_hard_limit(text: str | None) -> bool:
    return hard_limit(text) is not None


class AnamAPI:
    """The wire client; `flow` is how `start_session` starts an engine session."""

    def __init__(
        self,
        http: ProviderHttp,
        *,
        api_key: str,
        api_url: str = DEFAULT_API_URL,
        flow: SessionFlow = "two_step",
    ) -> None:
        self._http = http
        self._api_key = api_key
        self._base_url = api_url.rstrip("/") + "/"
        self.flow: SessionFlow = flow

    def __repr__(self) -> str:
        return f"AnamAPI(api_url={self._base_url!r}, flow={self.flow!r})"

    def _url(self, path: str) -> str:
        return urljoin(self._base_url, path.lstrip("/"))

    def session_token_payload(
        self, persona: PersonaConfig, *, livekit_url: str, livekit_token: str
    ) -> dict[str, Any]:
        """The persona and LiveKit body: of the session token (two-step) or the direct engine session."""
        persona_config: dict[str, Any] = {
            "type": "ephemeral",
            "name": persona.name,
            "avatarId": persona.avatar_id,
            "llmId": LLM_ID,
        }
        if persona.avatar_model is not None:
            persona_config["avatarModel"] = persona.avatar_model
        director_notes = persona.director_notes.wire() if persona.director_notes else {}
        if director_notes:
            persona_config["directorNotes"] = director_notes
        if persona.max_session_length_seconds is not None:
            persona_config["maxSessionLengthSeconds"] = persona.max_session_length_seconds
        payload: dict[str, Any] = {
            "personaConfig": persona_config,
            "environment": {"livekitUrl": livekit_url, "livekitToken": livekit_token},
        }
        session_options = persona.session_options.wire() if persona.session_options else {}
        if session_options:
            payload["sessionOptions"] = session_options
        return payload

    async def start_session(
        self,
        persona: PersonaConfig,
        *,
        livekit_url: str,
        livekit_token: str,
        deadline: float | None = None,
        before_create: Callable[[], None] | None = None,
    ) -> EngineSession:
        """Start an engine session whose avatar joins LiveKit with `livekit_token`, by this client's flow.

        `before_create` is called right before the request that starts the billed engine session.
        """
        if self.flow == "direct":
            if before_create is not None:
                before_create()
            return await self.start_session_direct(
                persona, livekit_url=livekit_url, livekit_token=livekit_token, deadline=deadline
            )
        session_token = await self.create_session_token(
            persona, livekit_url=livekit_url, livekit_token=livekit_token, deadline=deadline
        )
        if before_create is not None:
            before_create()
        return await self.start_engine_session(session_token, deadline=deadline)

    async def create_session_token(
        self,
        persona: PersonaConfig,
        *,
        livekit_url: str,
        livekit_token: str,
        deadline: float | None = None,
    ) -> str:
        reply = await self._http.post_json(
            self._url("/v1/auth/session-token"),
            self.session_token_payload(
                persona, livekit_url=livekit_url, livekit_token=livekit_token
            ),
            headers={
                "Authorization": f"Bearer {self._api_key}",
                "Content-Type": "application/json",
            },
            operation="create session token",
            required="sessionToken",
            deadline=deadline,
        )
        return str(reply["sessionToken"])

    async def start_engine_session(
        self, session_token: str, *, deadline: float | None = None
    ) -> EngineSession:
        reply = await self._http.post_json(
            self._url(ENGINE_SESSION_PATH),
            {},
            headers={
                "Authorization": f"Bearer {session_token}",
                "Content-Type": "application/json",
            },
            operation="start engine session",
            creates_session=True,
            required="sessionId",
            deadline=deadline,
        )
        return _engine_session(reply)

    async def start_session_direct(
        self,
        persona: PersonaConfig,
        *,
        livekit_url: str,
        livekit_token: str,
        deadline: float | None = None,
    ) -> EngineSession:
        """Start the engine session in one call, authorised by the API key (no session token)."""
        reply = await self._http.post_json(
            self._url(ENGINE_SESSION_PATH),
            self.session_token_payload(
                persona, livekit_url=livekit_url, livekit_token=livekit_token
            ),
            headers={
                "Authorization": f"Bearer {self._api_key}",
                "Content-Type": "application/json",
            },
            operation="start engine session",
            creates_session=True,
            required="sessionId",
            deadline=deadline,
        )
        return _engine_session(reply)


def _engine_session(reply: dict[str, Any]) -> EngineSession:
    engine_host = reply.get("engineHost")
    return EngineSession(
        session_id=str(reply["sessionId"]),
        engine_host=engine_host if isinstance(engine_host, str) else None,
        details=reply,
    )
