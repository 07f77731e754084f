"""A strict emulator of Anam's session API (see shared/notes/provider-apis.md).

Routes (names for `inject` / `requests_for`):
  "session_token":  POST /v1/auth/session-token  (Bearer <API key>, persona body)  -> 200 {"sessionToken"}
  "engine_session": POST /v1/engine/session      (Bearer <sessionToken>, {})       -> 200 {"sessionId", ...}
                    POST /v1/engine/session      (Bearer <API key>, persona body)  -> 200 {"sessionId", ...}
The first two are the seed's two-step flow; the last is the one-call flow of Anam's published API, as
livekit-plugins-anam 1.8.9 sends it. Session tokens are single use. Errors are
{"error": "<reason>", "message": "<text>"}. A persona's `maxSessionLengthSeconds` is enforced: the
session ends (TIMED_OUT, its avatar leaves) that long after it started.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web

from ._checks import (
    Rejected,
    check_bool,
    check_int,
    check_keys,
    check_number,
    check_str,
    check_token,
    check_url,
    json_object_body,
    sub_object,
)
from ._faults import StatusFault
from ._records import RecordedRequest
from ._server import EmulatorServer, Reply
from ._sessions import AvatarLauncher, Provider

SESSION_TOKEN_PATH: Final = "/v1/auth/session-token"
ENGINE_SESSION_PATH: Final = "/v1/engine/session"
SAMPLE_RATE: Final = 24000
LLM_ID: Final = "CUSTOMER_CLIENT_V1"
LIVEKIT_URL_SCHEMES: Final = ("ws", "wss", "http", "https")

CONCURRENT_SESSION_LIMIT: Final = "Concurrent session limit reached"
SPEND_CAP_REACHED: Final = "Spend cap reached"
RATE_LIMITED: Final = "Rate limit exceeded"


def concurrent_session_limit() -> StatusFault:
    return StatusFault(429, CONCURRENT_SESSION_LIMIT)


def spend_cap_reached() -> StatusFault:
    return StatusFault(429, SPEND_CAP_REACHED)


def rate_limited(retry_after: int | float | datetime | str) -> StatusFault:
    return StatusFault(429, RATE_LIMITED, retry_after=retry_after)


@dataclass(eq=False)
class _IssuedToken:
    config: dict[str, Any] = field(repr=False)
    expires_at: float
    used: bool = False


class AnamEmulator(EmulatorServer):
    provider: Provider = "anam"

    def __init__(
        self,
        api_key: str = "anam-test-key",
        *,
        avatar_launcher: AvatarLauncher | None = None,
        require_jwt_token: bool = True,
        latency: float = 0.0,
        connect_latency: float = 0.0,
        max_concurrent_sessions: int | None = None,
        session_token_ttl: float = 3600.0,
    ) -> None:
        super().__init__(
            routes=("session_token", "engine_session"),
            avatar_launcher=avatar_launcher,
            latency=latency,
            connect_latency=connect_latency,
        )
        self._api_key = api_key
        self._require_jwt = require_jwt_token
        self._max_concurrent = max_concurrent_sessions
        self._token_ttl = session_token_ttl
        self._tokens: dict[str, _IssuedToken] = {}
        self.add_route("POST", SESSION_TOKEN_PATH, "session_token", self._session_token)
        self.add_route("POST", ENGINE_SESSION_PATH, "engine_session", self._engine_session)

    def worker_settings(self, avatar_id: str = "av-1") -> dict[str, str]:
        """The variables that point a worker (ours or the reference) at this emulator."""
        return {
            "AVATAR_PROVIDER": "anam",
            "ANAM_API_KEY": self._api_key,
            "ANAM_API_URL": self.url,
            "ANAM_AVATAR_ID": avatar_id,
        }

    @property
    def issued_token_count(self) -> int:
        return len(self._tokens)

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": HTTPStatus(status).phrase, "message": message}

    async def _session_token(self, request: web.Request, record: RecordedRequest) -> Reply:
        given = _bearer(record)
        if not hmac.compare_digest(given.encode(), self._api_key.encode()):
            raise Rejected(401, "invalid API key")
        body = json_object_body(record)
        _validate_token_request(body, require_jwt=self._require_jwt)
        token = _new_token(self._token_ttl)
        expires_at = asyncio.get_running_loop().time() + self._token_ttl
        self._tokens[token] = _IssuedToken(config=body, expires_at=expires_at)
        return Reply(200, {"sessionToken": token}, success_field="sessionToken")

    async def _engine_session(self, request: web.Request, record: RecordedRequest) -> Reply:
        given = _bearer(record)
        if hmac.compare_digest(given.encode(), self._api_key.encode()):
            # One call: the API key and the persona body that would have gone to session-token.
            body = json_object_body(record)
            _validate_token_request(body, require_jwt=self._require_jwt)
            self._check_concurrency()
            return self._start_engine(record, body)
        issued = self._tokens.get(given)
        if issued is None:
            raise Rejected(401, "invalid session token")
        if issued.used:
            raise Rejected(401, "session token already used")
        if asyncio.get_running_loop().time() >= issued.expires_at:
            raise Rejected(401, "session token expired")
        body = json_object_body(record)
        check_keys(body, where="", required=())
        self._check_concurrency()
        issued.used = True
        return self._start_engine(record, issued.config)

    def _check_concurrency(self) -> None:
        if self._max_concurrent is not None and len(self.active_sessions) >= self._max_concurrent:
            raise Rejected(429, CONCURRENT_SESSION_LIMIT)

    def _start_engine(self, record: RecordedRequest, config: dict[str, Any]) -> Reply:
        environment = config["environment"]
        session = self.create_session(
            record,
            config=config,
            livekit_url=environment["livekitUrl"],
            livekit_token=environment["livekitToken"],
            sample_rate=SAMPLE_RATE,
        )
        cap = config["personaConfig"].get("maxSessionLengthSeconds")
        if cap is not None:
            self.cap_length(session.session_id, cap)
        assert self._url is not None
        return Reply(
            200,
            {
                "sessionId": session.session_id,
                "engineHost": f"{self._url.host}:{self._url.port}",
                "engineProtocol": "https",
                "signallingEndpoint": f"/v1/engine/session/{session.session_id}/signalling",
            },
            success_field="sessionId",
        )


def _bearer(record: RecordedRequest) -> str:
    scheme, _, credentials = record.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Rejected(401, "missing bearer token")
    return credentials.strip()


def _new_token(ttl: float) -> str:
    def encode(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    issued_at = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"jti": str(uuid.uuid4()), "iat": issued_at, "exp": issued_at + int(ttl)}
    return ".".join(
        (
            encode(json.dumps(header).encode()),
            encode(json.dumps(claims).encode()),
            encode(secrets.token_bytes(32)),
        )
    )


def _check_director_notes(persona: dict[str, Any]) -> None:
    """A string (the seed era), or the object livekit-plugins-anam 1.8.9 sends."""
    if isinstance(persona["directorNotes"], str):
        return
    notes = sub_object(persona, "directorNotes", where="personaConfig")
    where = "personaConfig.directorNotes"
    check_keys(
        notes,
        where=where,
        required=(),
        optional=("expressivity", "presetStyle", "customStylePrompt"),
    )
    if "expressivity" in notes and not 0 <= check_number(notes, "expressivity", where=where) <= 1:
        raise Rejected(400, f"{where + '.expressivity'!r} must be within 0..1")
    if "presetStyle" in notes and "customStylePrompt" in notes:
        raise Rejected(400, f"{where!r}: presetStyle and customStylePrompt are mutually exclusive")
    if "presetStyle" in notes:
        check_str(notes, "presetStyle", where=where)
    if "customStylePrompt" in notes:
        check_str(notes, "customStylePrompt", where=where)


def _validate_token_request(body: dict[str, Any], *, require_jwt: bool) -> None:
    check_keys(
        body, where="", required=("personaConfig", "environment"), optional=("sessionOptions",)
    )

    persona = sub_object(body, "personaConfig", where="")
    where = "personaConfig"
    check_keys(
        persona,
        where=where,
        required=("type", "name", "avatarId", "llmId"),
        optional=("avatarModel", "directorNotes", "maxSessionLengthSeconds"),
    )
    if persona["type"] != "ephemeral":
        raise Rejected(400, "'personaConfig.type' must be 'ephemeral'")
    check_str(persona, "name", where=where)
    check_str(persona, "avatarId", where=where)
    if persona["llmId"] != LLM_ID:
        raise Rejected(400, f"'personaConfig.llmId' must be {LLM_ID!r}")
    if "avatarModel" in persona:
        check_str(persona, "avatarModel", where=where)
    if "directorNotes" in persona:
        _check_director_notes(persona)
    if "maxSessionLengthSeconds" in persona:
        check_int(persona, "maxSessionLengthSeconds", where=where, minimum=1)

    environment = sub_object(body, "environment", where="")
    where = "environment"
    check_keys(environment, where=where, required=("livekitUrl", "livekitToken"))
    check_url(environment, "livekitUrl", LIVEKIT_URL_SCHEMES, where=where)
    check_token(environment, "livekitToken", where=where, require_jwt=require_jwt)

    if "sessionOptions" in body:
        options = sub_object(body, "sessionOptions", where="")
        where = "sessionOptions"
        check_keys(
            options,
            where=where,
            required=(),
            optional=("videoWidth", "videoHeight", "showAIAvatarDisclosure"),
        )
        if ("videoWidth" in options) != ("videoHeight" in options):
            raise Rejected(400, "'sessionOptions.videoWidth' and 'videoHeight' go together")
        if "videoWidth" in options:
            check_int(options, "videoWidth", where=where, minimum=1)
            check_int(options, "videoHeight", where=where, minimum=1)
        if "showAIAvatarDisclosure" in options:
            check_bool(options, "showAIAvatarDisclosure", where=where)
