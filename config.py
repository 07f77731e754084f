"""Typed configuration, read once from the environment (and `.env`) and validated as a whole.

Every problem is collected into one `ConfigError` that names each offending variable; values are never
echoed, so a mistyped secret cannot leak into a log line.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from providers.image_file import ImageFile, read_image_file
from providers.session import RENEWAL_MARGIN

ProviderName = Literal["local", "lemonslice", "anam"]
LemonSliceModel = Literal["flash", "lite", "pro"]
LemonSliceAspectRatio = Literal["1x1", "2x3", "9x16"]
# Anam: "direct" starts the engine session with the API key in one call; "two_step" first exchanges
# the key for a session token (one more round trip).
AnamSessionFlow = Literal["two_step", "direct"]
PROVIDER_NAMES: tuple[ProviderName, ...] = ("local", "lemonslice", "anam")

DEFAULT_LEMONSLICE_API_URL = "https://lemonslice.com/api/liveai/sessions"
DEFAULT_ANAM_API_URL = "https://api.anam.ai"

DEFAULT_INSTRUCTIONS = (
    "You are a friendly voice assistant shown to the user as a video avatar. "
    "Keep answers short and conversational, without lists, markdown, emojis or other symbols."
)
DEFAULT_GREETING = "Greet the user warmly in one short sentence and offer your help."


class ConfigError(Exception):
    """The configuration is unusable; `problems` names each variable and what is wrong with it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "invalid configuration:\n" + "\n".join(f"  - {problem}" for problem in problems)
        )


def _check_url(value: str | None, schemes: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    parsed = urlparse(value)
    if parsed.scheme not in schemes or not parsed.netloc:
        raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
    return value


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_unreachable_from_outside(host: str | None) -> bool:
    """A host no cloud service can reach: loopback, a private or link-local address."""
    if is_loopback_host(host):
        return True
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return address.is_private or address.is_link_local


def _check_provider_url(value: str) -> str:
    """https, or plain http to this machine only: the request carries the API key."""
    checked = _check_url(value, ("http", "https"))
    assert checked is not None
    parsed = urlparse(checked)
    if parsed.scheme == "http" and not is_loopback_host(parsed.hostname):
        raise ValueError(
            "must start with https:// (plain http:// would send the API key in clear text; it is "
            "accepted only for a loopback host such as 127.0.0.1, e.g. a local emulator)"
        )
    return checked


class Settings(BaseModel):
    """All settings of the worker. Field names map to upper-case environment variables.

    Reading (environment and `.env`, by pydantic-settings) is kept apart from validation, so a bad
    value cannot stop the other checks from running: see `load_settings`.
    """

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    # LiveKit (standard names, shared with the livekit CLI and SDKs)
    livekit_url: str | None = None
    livekit_api_key: SecretStr | None = None
    livekit_api_secret: SecretStr | None = None

    # Avatar selection and the avatar participant
    avatar_provider: ProviderName | None = None
    # Room for the "-<n>" a restarted avatar's identity gets (LiveKit allows 128 characters).
    avatar_identity: str | None = Field(default=None, min_length=1, max_length=120)
    # The avatar participant's display name (the plugins' avatar_participant_name); unset: its identity.
    avatar_name: str | None = Field(default=None, min_length=1, max_length=256)
    # The LiveKit URL the provider's avatar joins with, when it differs from LIVEKIT_URL (a worker
    # that reaches LiveKit by an internal address; the provider's cloud needs the public one).
    avatar_livekit_url: str | None = None
    avatar_token_ttl: float = Field(default=600.0, gt=0, le=6 * 3600)
    avatar_join_timeout: float = Field(default=30.0, gt=0, le=600)
    avatar_start_timeout: float = Field(default=30.0, gt=0, le=600)
    avatar_request_timeout: float = Field(default=10.0, gt=0, le=120)
    avatar_max_retries: int = Field(default=3, ge=0, le=10)
    # New provider sessions started after the avatar leaves mid-call (0: never; the agent keeps its voice).
    avatar_max_restarts: int = Field(default=2, ge=0, le=10)
    # The greeting starts at once in the agent's own voice; the avatar takes over at a sentence's
    # end when its video is up (docs/first-word.md). False: speech waits for the avatar's video.
    avatar_speak_before_video: bool = True
    # With it, the avatar takes over within an utterance only at a sentence's end this many seconds
    # after its video is up (0: the next one): a newly joined avatar's first words reach the user
    # later (docs/first-word.md, "The avatar's first seconds").
    avatar_handover_settle: float = Field(default=0.0, ge=0, le=60)
    agent_name: str = Field(default="avatar-agent", min_length=1, max_length=128)
    # The worker's health/HTTP port in `start` mode (0 = any free port).
    agent_http_port: int = Field(default=8081, ge=0, le=65535)
    # Where the recovery watcher reaches this worker's health endpoint (e.g. http://10.0.0.5:8081/).
    # Set, a whole worker's death is seen in seconds; unset, when livekit-server drops its agents.
    agent_health_url: str | None = None
    # The worker's readiness endpoint (observability/health.py): 200 when it can serve jobs, 503
    # with the reasons when not (0 = any free port, logged; unset = not served).
    agent_health_port: int | None = Field(default=None, ge=0, le=65535)
    # CPU load (0-1) at which the worker stops taking jobs. Unset: livekit-agents' own default
    # (0.7 in `start`, no limit in `dev`); LiveKit Cloud hosting ignores a custom value.
    agent_load_threshold: float | None = Field(default=None, gt=0, le=1)
    # Capacity by job count instead of CPU: the worker's load is running jobs / this, and it takes
    # no job beyond it. Unset: livekit-agents' CPU-based load.
    agent_max_jobs: int | None = Field(default=None, ge=1, le=1000)
    # Prometheus metrics on this port's /metrics (unset: no metrics endpoint). Job processes write
    # theirs to PROMETHEUS_MULTIPROC_DIR (a directory the worker empties as it starts; unset: a new
    # temporary one), which the endpoint collects (observability/prometheus.py).
    prometheus_port: int | None = Field(default=None, ge=1, le=65535)
    prometheus_multiproc_dir: str | None = Field(default=None, min_length=1)

    # LemonSlice
    lemonslice_api_key: SecretStr | None = None
    lemonslice_api_url: str = DEFAULT_LEMONSLICE_API_URL
    lemonslice_agent_id: str | None = None
    lemonslice_agent_image_url: str | None = None
    # A PNG or JPEG face uploaded with the create (instead of an agent id or an image URL). The
    # variable names a file; the field holds its bytes, read once as the settings are loaded.
    lemonslice_agent_image_path: ImageFile | None = None
    lemonslice_agent_prompt: str | None = None
    lemonslice_agent_idle_prompt: str | None = None
    # Seconds of silence before LemonSlice ends the session. Positive only: the provider reads a
    # negative value as "never", and a session that never idles out bills until its length cap.
    lemonslice_idle_timeout: int | None = Field(default=None, ge=1)
    # The actions (pose triggers) set up on the LemonSlice agent, comma-separated: the gesture tool
    # offers these names to the LLM and sends the one it picks. None set: no gesture tool.
    lemonslice_actions: tuple[str, ...] = ()
    # The LemonSlice model the avatar runs on (unset: LemonSlice's default).
    lemonslice_model: LemonSliceModel | None = None
    # Seconds LemonSlice waits after the last speech chunk before it counts the answer as done.
    lemonslice_response_done_timeout: float | None = Field(default=None, gt=0, le=60)
    lemonslice_aspect_ratio: LemonSliceAspectRatio | None = None
    # An external meeting (Zoom, Google Meet, Teams, Webex) the avatar joins; the agent then hears
    # the meeting (its audio and chat) instead of the room.
    lemonslice_meeting_url: str | None = Field(default=None, repr=False)  # may carry a passcode
    lemonslice_meeting_bot_name: str | None = Field(default=None, min_length=1, max_length=100)
    # The longest a LemonSlice session lives (LemonSlice's docs: 30 min by default; the API has no
    # field for it, so nothing is sent). Set, the avatar is renewed before it (docs/lifecycle.md).
    lemonslice_max_session_length_seconds: int | None = Field(default=None, ge=1)

    # Anam
    anam_api_key: SecretStr | None = None
    anam_api_url: str = DEFAULT_ANAM_API_URL
    anam_avatar_id: str | None = None
    anam_persona_name: str = "Assistant"
    anam_avatar_model: str | None = None
    anam_session_flow: AnamSessionFlow = "direct"
    # Director notes: how strongly (0-1) the avatar acts out a preset style or a custom style prompt.
    anam_expressivity: float | None = Field(default=None, ge=0, le=1)
    anam_preset_style: str | None = None
    anam_custom_style_prompt: str | None = None
    # The session's output size in pixels, width and height together (unset: the model's default).
    anam_video_width: int | None = Field(default=None, ge=1)
    anam_video_height: int | None = Field(default=None, ge=1)
    anam_show_ai_avatar_disclosure: bool | None = None
    # The persona's `maxSessionLengthSeconds`: Anam ends a session this long after it started; the
    # avatar is renewed before that, at a pause in speech (docs/lifecycle.md).
    anam_max_session_length_seconds: int | None = Field(default=None, ge=1)

    # Voice pipeline (LiveKit Inference model strings)
    stt_model: str = "deepgram/nova-3"
    stt_language: str = "multi"
    llm_model: str = "openai/gpt-4.1-mini"
    tts_model: str = "cartesia/sonic-3"
    tts_voice: str = "9626c31c-bec5-4cca-baa8-f8ba9e84c8bc"
    agent_instructions: str = DEFAULT_INSTRUCTIONS
    agent_greeting: str = DEFAULT_GREETING
    # LiveKit Inference needs LiveKit Cloud; "auto" uses it when LIVEKIT_URL is a LiveKit Cloud URL.
    voice_mode: Literal["auto", "cloud", "offline"] = "auto"

    @field_validator("livekit_url", "avatar_livekit_url")
    @classmethod
    def _livekit_url(cls, value: str | None) -> str | None:
        return _check_url(value, ("ws", "wss", "http", "https"))

    @field_validator("agent_health_url")
    @classmethod
    def _health_url(cls, value: str | None) -> str | None:
        return _check_url(value, ("http", "https"))

    @field_validator("lemonslice_api_url", "anam_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return _check_provider_url(value)

    @field_validator("agent_name")
    @classmethod
    def _agent_name(cls, value: str) -> str:
        # A blank name would register for automatic dispatch: an agent in every room of the project.
        if not value.strip() or value != value.strip():
            raise ValueError("must be a name without leading or trailing blanks")
        return value

    @field_validator("lemonslice_agent_image_url")
    @classmethod
    def _image_url(cls, value: str | None) -> str | None:
        return _check_url(value, ("http", "https"))

    @field_validator("lemonslice_agent_image_path", mode="before")
    @classmethod
    def _image_file(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str | Path):
            return read_image_file(value)
        return value

    @field_validator("lemonslice_meeting_url")
    @classmethod
    def _meeting_url(cls, value: str | None) -> str | None:
        return _check_url(value, ("https",))

    @field_validator(
        "lemonslice_agent_id",
        "lemonslice_agent_image_url",
        "lemonslice_agent_prompt",
        "lemonslice_agent_idle_prompt",
        "lemonslice_model",
        "lemonslice_aspect_ratio",
        "lemonslice_meeting_url",
        "lemonslice_meeting_bot_name",
        "lemonslice_response_done_timeout",
        "anam_avatar_id",
        "anam_avatar_model",
        "anam_preset_style",
        "anam_custom_style_prompt",
        "avatar_identity",
        "avatar_name",
        "avatar_provider",
        "avatar_livekit_url",
        "livekit_url",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("lemonslice_actions", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator(
        "livekit_api_key", "livekit_api_secret", "lemonslice_api_key", "anam_api_key", mode="before"
    )
    @classmethod
    def _blank_secret_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def provider(self) -> ProviderName:
        """The provider in use; only meaningful on settings that passed `validate_settings`."""
        return _resolve_provider(self)[0] or "local"

    @property
    def token_ttl(self) -> timedelta:
        return timedelta(seconds=self.avatar_token_ttl)

    @property
    def avatar_url(self) -> str | None:
        """Where the provider's avatar joins LiveKit."""
        return self.avatar_livekit_url or self.livekit_url


def _resolve_provider(settings: Settings) -> tuple[ProviderName | None, str | None]:
    if settings.avatar_provider is not None:
        return settings.avatar_provider, None
    keyed: list[ProviderName] = []
    if settings.lemonslice_api_key is not None:
        keyed.append("lemonslice")
    if settings.anam_api_key is not None:
        keyed.append("anam")
    if not keyed:
        return "local", None
    if len(keyed) > 1:
        return None, (
            "AVATAR_PROVIDER: not set, and both LEMONSLICE_API_KEY and ANAM_API_KEY are set; "
            "set AVATAR_PROVIDER to lemonslice or anam"
        )
    return keyed[0], None


def _cross_field_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    for name in ("livekit_url", "livekit_api_key", "livekit_api_secret"):
        if getattr(settings, name) is None:
            problems.append(f"{name.upper()}: missing (the worker connects to LiveKit with it)")

    if (
        settings.prometheus_port is not None
        and settings.prometheus_port == settings.agent_http_port
    ):
        problems.append("PROMETHEUS_PORT: the same port as AGENT_HTTP_PORT; choose another")

    provider, ambiguity = _resolve_provider(settings)
    if ambiguity:
        problems.append(ambiguity)
    if provider == "lemonslice":
        if settings.lemonslice_api_key is None:
            problems.append("LEMONSLICE_API_KEY: missing (AVATAR_PROVIDER is lemonslice)")
        problems += _lemonslice_face_problems(settings)
    if provider != "lemonslice" and settings.lemonslice_meeting_url is not None:
        problems.append(
            "LEMONSLICE_MEETING_URL: set, but AVATAR_PROVIDER is not lemonslice "
            "(only the LemonSlice avatar joins external meetings)"
        )
    if provider == "anam":
        if settings.anam_api_key is None:
            problems.append("ANAM_API_KEY: missing (AVATAR_PROVIDER is anam)")
        if settings.anam_avatar_id is None:
            problems.append("ANAM_AVATAR_ID: missing (AVATAR_PROVIDER is anam)")
        problems += _anam_option_problems(settings)

    needed = settings.avatar_start_timeout + settings.avatar_join_timeout
    if settings.avatar_token_ttl < needed:
        problems.append(
            f"AVATAR_TOKEN_TTL: shorter than AVATAR_START_TIMEOUT + AVATAR_JOIN_TIMEOUT ({needed:g} s): "
            "the avatar's token could expire before it may join"
        )
    if provider in ("lemonslice", "anam"):
        problems += _avatar_reachability_problems(settings, provider)
        problems += _session_length_problems(settings, provider)
    return problems


def _lemonslice_face_problems(settings: Settings) -> list[str]:
    """Which face LemonSlice shows: an agent id, an image URL, or an uploaded image file; one only."""
    given = [
        name.upper()
        for name in (
            "lemonslice_agent_id",
            "lemonslice_agent_image_url",
            "lemonslice_agent_image_path",
        )
        if getattr(settings, name) is not None
    ]
    if len(given) == 1:
        return []
    if not given:
        return [
            "LEMONSLICE_AGENT_ID, LEMONSLICE_AGENT_IMAGE_URL or LEMONSLICE_AGENT_IMAGE_PATH: "
            "none set; set exactly one"
        ]
    both = "both" if len(given) == 2 else "all three"
    return [f"{' and '.join(given)}: {both} set; set exactly one"]


def _session_length_problems(settings: Settings, provider: ProviderName) -> list[str]:
    """A capped session is renewed `RENEWAL_MARGIN` s plus a whole start and join before its cap."""
    if provider == "anam":
        variable, cap = "ANAM_MAX_SESSION_LENGTH_SECONDS", settings.anam_max_session_length_seconds
    else:
        variable = "LEMONSLICE_MAX_SESSION_LENGTH_SECONDS"
        cap = settings.lemonslice_max_session_length_seconds
    lead = settings.avatar_start_timeout + settings.avatar_join_timeout + RENEWAL_MARGIN
    if cap is None or cap > lead:
        return []
    return [
        f"{variable}: {cap} s leaves no time to renew the avatar before it ends; it must be over "
        f"AVATAR_START_TIMEOUT + AVATAR_JOIN_TIMEOUT + {RENEWAL_MARGIN:g} s ({lead:g} s)"
    ]


def _anam_option_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    if settings.anam_preset_style is not None and settings.anam_custom_style_prompt is not None:
        problems.append(
            "ANAM_PRESET_STYLE and ANAM_CUSTOM_STYLE_PROMPT: both set; Anam takes one style, set at most one"
        )
    has_width = settings.anam_video_width is not None
    if has_width != (settings.anam_video_height is not None):
        missing = "ANAM_VIDEO_HEIGHT" if has_width else "ANAM_VIDEO_WIDTH"
        given = "ANAM_VIDEO_WIDTH" if has_width else "ANAM_VIDEO_HEIGHT"
        problems.append(f"{missing}: missing ({given} is set; the video size needs both)")
    return problems


def _avatar_reachability_problems(settings: Settings, provider: ProviderName) -> list[str]:
    """A provider in the cloud sends its avatar to LiveKit from outside: it needs a public URL."""
    api_url = settings.lemonslice_api_url if provider == "lemonslice" else settings.anam_api_url
    if is_loopback_host(urlparse(api_url).hostname):
        return []  # a provider on this machine (an emulator) reaches what this machine reaches
    avatar_host = urlparse(settings.avatar_url or "").hostname
    if not is_unreachable_from_outside(avatar_host):
        return []
    variable = "AVATAR_LIVEKIT_URL" if settings.avatar_livekit_url else "LIVEKIT_URL"
    return [
        f"{variable}: the {provider} avatar joins from the provider's cloud, which cannot reach "
        "a loopback or private address; set AVATAR_LIVEKIT_URL to your LiveKit server's public URL"
    ]


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ())) or "configuration"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{location.upper()}: {message}"


class _Environment(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )


# The same names as Settings, untyped: reading the environment never fails, validation comes after.
_RawEnvironment = create_model(  # type: ignore[call-overload]
    "_RawEnvironment",
    __base__=_Environment,
    **{name: (Any, None) for name in Settings.model_fields},
)


def _read_environment(overrides: dict[str, Any]) -> dict[str, Any]:
    """The raw values from the environment and `.env` (overrides win)."""
    values: dict[str, Any] = _RawEnvironment(**overrides).model_dump(exclude_none=True)
    return values


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; raises `ConfigError` naming every problem at once."""
    raw = _read_environment(overrides)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as error:
        issues = error.errors(include_input=False)
        problems = [_describe(dict(issue)) for issue in issues]
        invalid = {str(issue["loc"][0]) for issue in issues if issue["loc"]}
        # Cross-field checks still run on the fields that did parse, so one message names everything.
        partial = Settings.model_validate({k: v for k, v in raw.items() if k not in invalid})
        problems += [p for p in _cross_field_problems(partial) if not _names_any(p, invalid)]
        raise ConfigError(problems) from None
    problems = _cross_field_problems(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def _names_any(problem: str, fields: set[str]) -> bool:
    """Whether the variables a problem is about (the names before its colon) include one of `fields`."""
    named = set(re.findall(r"[A-Z][A-Z0-9_]*", problem.split(":", 1)[0]))
    return any(field.upper() in named for field in fields)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, validated on first use."""
    return load_settings()
