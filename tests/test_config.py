from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, Settings, load_settings
from providers.registry import avatar_options
from tests.support.faces import jpeg_face, png_face

LIVEKIT = {
    "LIVEKIT_URL": "wss://example.livekit.cloud",
    "LIVEKIT_API_KEY": "APIkey123",
    "LIVEKIT_API_SECRET": "livekit-secret-value-that-must-not-leak",
}
SECRETS = ("livekit-secret-value-that-must-not-leak", "ls-secret-key-0001", "anam-secret-key-0002")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test sees only the variables it sets, and no `.env` but the one it writes."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)


def configure(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    for name, value in {**LIVEKIT, **variables}.items():
        monkeypatch.setenv(name, value)


def problems_of(monkeypatch: pytest.MonkeyPatch, **variables: str) -> list[str]:
    configure(monkeypatch, **variables)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    for secret in SECRETS:
        assert secret not in message
    return caught.value.problems


def test_no_provider_key_means_the_local_avatar(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch)
    assert load_settings().provider == "local"


def test_the_provider_whose_key_is_set_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, ANAM_API_KEY="anam-secret-key-0002", ANAM_AVATAR_ID="avatar-1")
    settings = load_settings()
    assert settings.provider == "anam"
    assert settings.anam_api_url == "https://api.anam.ai"


def test_defaults_match_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, LEMONSLICE_API_KEY="ls-secret-key-0001", LEMONSLICE_AGENT_ID="agent-7")
    settings = load_settings()
    assert settings.provider == "lemonslice"
    assert settings.lemonslice_api_url == "https://lemonslice.com/api/liveai/sessions"
    assert settings.token_ttl.total_seconds() == 600
    assert settings.avatar_join_timeout == 30


def test_the_handover_settle_time_reaches_the_avatars_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(monkeypatch)
    assert avatar_options(load_settings(), "avatar").handover_settle == 0.0  # the next pause
    configure(monkeypatch, AVATAR_HANDOVER_SETTLE="2.5")
    assert avatar_options(load_settings(), "avatar").handover_settle == 2.5


def test_both_keys_without_a_choice_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = problems_of(
        monkeypatch, LEMONSLICE_API_KEY="ls-secret-key-0001", ANAM_API_KEY="anam-secret-key-0002"
    )
    assert any(p.startswith("AVATAR_PROVIDER") and "both" in p for p in problems)


def test_agent_id_and_image_url_together_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = problems_of(
        monkeypatch,
        LEMONSLICE_API_KEY="ls-secret-key-0001",
        LEMONSLICE_AGENT_ID="agent-7",
        LEMONSLICE_AGENT_IMAGE_URL="https://cdn.example.com/face.png",
    )
    assert problems == [
        "LEMONSLICE_AGENT_ID and LEMONSLICE_AGENT_IMAGE_URL: both set; set exactly one"
    ]


def test_every_problem_is_named_in_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_API_SECRET", "livekit-secret-value-that-must-not-leak")
    monkeypatch.setenv("AVATAR_PROVIDER", "lemonslice")
    monkeypatch.setenv("LEMONSLICE_API_URL", "not a url ls-secret-key-0001")
    monkeypatch.setenv("AVATAR_TOKEN_TTL", "-5")
    monkeypatch.setenv("AVATAR_JOIN_TIMEOUT", "soon")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    named = {problem.split(":")[0] for problem in caught.value.problems}
    assert named == {
        "LIVEKIT_URL",
        "LIVEKIT_API_KEY",
        "LEMONSLICE_API_URL",
        "AVATAR_TOKEN_TTL",
        "AVATAR_JOIN_TIMEOUT",
        "LEMONSLICE_API_KEY",
        "LEMONSLICE_AGENT_ID, LEMONSLICE_AGENT_IMAGE_URL or LEMONSLICE_AGENT_IMAGE_PATH",
    }
    assert "ls-secret-key-0001" not in str(caught.value)
    assert "livekit-secret-value-that-must-not-leak" not in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("AVATAR_PROVIDER", "heygen", "AVATAR_PROVIDER"),
        ("LIVEKIT_URL", "localhost:7880", "LIVEKIT_URL"),
        ("ANAM_API_URL", "ftp://api.anam.ai", "ANAM_API_URL"),
        ("LEMONSLICE_AGENT_IMAGE_URL", "face.png", "LEMONSLICE_AGENT_IMAGE_URL"),
        ("AVATAR_TOKEN_TTL", "0", "AVATAR_TOKEN_TTL"),
        ("AVATAR_TOKEN_TTL", "86400", "AVATAR_TOKEN_TTL"),
        ("AVATAR_MAX_RETRIES", "-1", "AVATAR_MAX_RETRIES"),
        ("LEMONSLICE_IDLE_TIMEOUT", "1.5", "LEMONSLICE_IDLE_TIMEOUT"),
        # the provider reads a negative timeout as "never": a session that bills until its cap
        ("LEMONSLICE_IDLE_TIMEOUT", "-1", "LEMONSLICE_IDLE_TIMEOUT"),
        ("LEMONSLICE_IDLE_TIMEOUT", "0", "LEMONSLICE_IDLE_TIMEOUT"),
        ("VOICE_MODE", "telepathy", "VOICE_MODE"),
        ("LEMONSLICE_MODEL", "ultra", "LEMONSLICE_MODEL"),
        ("LEMONSLICE_RESPONSE_DONE_TIMEOUT", "0", "LEMONSLICE_RESPONSE_DONE_TIMEOUT"),
        ("LEMONSLICE_RESPONSE_DONE_TIMEOUT", "soon", "LEMONSLICE_RESPONSE_DONE_TIMEOUT"),
        ("LEMONSLICE_ASPECT_RATIO", "16x9", "LEMONSLICE_ASPECT_RATIO"),
        # a meeting link is joined over https only
        ("LEMONSLICE_MEETING_URL", "http://zoom.us/j/1", "LEMONSLICE_MEETING_URL"),
        # the API key in clear text over the network
        ("LEMONSLICE_API_URL", "http://lemonslice.com/api/liveai/sessions", "LEMONSLICE_API_URL"),
        ("ANAM_API_URL", "http://10.0.0.7:8080", "ANAM_API_URL"),
        # a blank name would register the agent for automatic dispatch to every room
        ("AGENT_NAME", "   ", "AGENT_NAME"),
        ("AVATAR_LIVEKIT_URL", "livekit.example.com", "AVATAR_LIVEKIT_URL"),
        ("AVATAR_MAX_RESTARTS", "-1", "AVATAR_MAX_RESTARTS"),
        ("AGENT_LOAD_THRESHOLD", "0", "AGENT_LOAD_THRESHOLD"),
        ("ANAM_SESSION_FLOW", "one_step", "ANAM_SESSION_FLOW"),
        ("PROMETHEUS_PORT", "0", "PROMETHEUS_PORT"),
        ("PROMETHEUS_PORT", "65536", "PROMETHEUS_PORT"),
        ("PROMETHEUS_PORT", "nine", "PROMETHEUS_PORT"),
        # the health endpoint already has it: the worker could not start
        ("PROMETHEUS_PORT", "8081", "PROMETHEUS_PORT"),
        ("ANAM_MAX_SESSION_LENGTH_SECONDS", "0", "ANAM_MAX_SESSION_LENGTH_SECONDS"),
        ("LEMONSLICE_MAX_SESSION_LENGTH_SECONDS", "1.5", "LEMONSLICE_MAX_SESSION_LENGTH_SECONDS"),
        ("AVATAR_NAME", "A" * 257, "AVATAR_NAME"),
        ("AVATAR_HANDOVER_SETTLE", "-0.5", "AVATAR_HANDOVER_SETTLE"),
        ("AVATAR_HANDOVER_SETTLE", "soon", "AVATAR_HANDOVER_SETTLE"),
    ],
)
def test_an_invalid_value_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    problems = problems_of(monkeypatch, **{variable: value})
    assert [p.split(":")[0] for p in problems] == [expected]


@pytest.mark.parametrize("provider", ["anam", "lemonslice"])
def test_a_length_cap_too_short_to_renew_before_is_named(
    monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    variable = f"{provider.upper()}_MAX_SESSION_LENGTH_SECONDS"
    account = (
        {"ANAM_API_KEY": "anam-secret-key-0002", "ANAM_AVATAR_ID": "avatar-1"}
        if provider == "anam"
        else {"LEMONSLICE_API_KEY": "ls-secret-key-0001", "LEMONSLICE_AGENT_ID": "agent-7"}
    )
    timeouts = {"AVATAR_START_TIMEOUT": "20", "AVATAR_JOIN_TIMEOUT": "20"}
    # renewal needs a whole start and join plus 10 s before the cap: over 50 s here
    problems = problems_of(
        monkeypatch, AVATAR_PROVIDER=provider, **account, **timeouts, **{variable: "50"}
    )
    assert [p.split(":")[0] for p in problems] == [variable]
    assert "AVATAR_START_TIMEOUT + AVATAR_JOIN_TIMEOUT" in problems[0]
    configure(monkeypatch, AVATAR_PROVIDER=provider, **account, **timeouts, **{variable: "51"})
    assert load_settings().provider == provider


def test_anam_needs_its_avatar_id(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = problems_of(monkeypatch, AVATAR_PROVIDER="anam", ANAM_API_KEY="anam-secret-key-0002")
    assert problems == ["ANAM_AVATAR_ID: missing (AVATAR_PROVIDER is anam)"]


ANAM = {"ANAM_API_KEY": "anam-secret-key-0002", "ANAM_AVATAR_ID": "a-1"}


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"ANAM_EXPRESSIVITY": "1.5"}, ["ANAM_EXPRESSIVITY"]),
        ({"ANAM_EXPRESSIVITY": "-0.1"}, ["ANAM_EXPRESSIVITY"]),
        ({"ANAM_EXPRESSIVITY": "lively"}, ["ANAM_EXPRESSIVITY"]),
        (
            {"ANAM_PRESET_STYLE": "warm", "ANAM_CUSTOM_STYLE_PROMPT": "calm and slow"},
            ["ANAM_PRESET_STYLE and ANAM_CUSTOM_STYLE_PROMPT"],
        ),
        ({"ANAM_VIDEO_WIDTH": "720"}, ["ANAM_VIDEO_HEIGHT"]),
        ({"ANAM_VIDEO_HEIGHT": "1280"}, ["ANAM_VIDEO_WIDTH"]),
        ({"ANAM_VIDEO_WIDTH": "0", "ANAM_VIDEO_HEIGHT": "1280"}, ["ANAM_VIDEO_WIDTH"]),
        ({"ANAM_VIDEO_WIDTH": "720.5", "ANAM_VIDEO_HEIGHT": "1280"}, ["ANAM_VIDEO_WIDTH"]),
        ({"ANAM_SHOW_AI_AVATAR_DISCLOSURE": "perhaps"}, ["ANAM_SHOW_AI_AVATAR_DISCLOSURE"]),
    ],
)
def test_a_malformed_anam_option_is_named(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: list[str]
) -> None:
    problems = problems_of(monkeypatch, **ANAM, **variables)
    assert [p.split(":")[0] for p in problems] == expected


def test_anam_options_are_read_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(
        monkeypatch,
        **ANAM,
        ANAM_EXPRESSIVITY="0.8",
        ANAM_CUSTOM_STYLE_PROMPT="calm and slow",
        ANAM_PRESET_STYLE="  ",  # blank is unset: not a second style
        ANAM_VIDEO_WIDTH="720",
        ANAM_VIDEO_HEIGHT="1280",
        ANAM_SHOW_AI_AVATAR_DISCLOSURE="true",
    )
    settings = load_settings()
    assert settings.anam_expressivity == 0.8
    assert settings.anam_preset_style is None
    assert settings.anam_custom_style_prompt == "calm and slow"
    assert (settings.anam_video_width, settings.anam_video_height) == (720, 1280)
    assert settings.anam_show_ai_avatar_disclosure is True


@pytest.mark.parametrize(("value", "flow"), [(None, "direct"), ("two_step", "two_step")])
def test_anam_session_flow_defaults_to_direct(
    monkeypatch: pytest.MonkeyPatch, value: str | None, flow: str
) -> None:
    extra = {"ANAM_SESSION_FLOW": value} if value else {}
    configure(monkeypatch, ANAM_API_KEY="anam-secret-key-0002", ANAM_AVATAR_ID="a-1", **extra)
    assert load_settings().anam_session_flow == flow


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "LIVEKIT_URL=ws://127.0.0.1:7880\nLIVEKIT_API_KEY=devkey\nLIVEKIT_API_SECRET=secret\n"
        "AVATAR_IDENTITY=my-avatar\n"
    )
    settings = load_settings()
    assert settings.livekit_url == "ws://127.0.0.1:7880"
    assert settings.avatar_identity == "my-avatar"


def test_secrets_are_hidden_from_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, ANAM_API_KEY="anam-secret-key-0002", ANAM_AVATAR_ID="avatar-1")
    text = repr(load_settings()) + str(load_settings())
    for secret in SECRETS:
        assert secret not in text


def test_env_example_documents_every_setting_and_is_itself_valid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    example = (Path(__file__).resolve().parent.parent / ".env.example").read_text()
    documented = {
        line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")
    }
    assert documented == {name.upper() for name in Settings.model_fields}
    (tmp_path / ".env").write_text(example)
    settings = load_settings()
    assert settings.provider == "local"
    assert settings.agent_instructions  # blank lines in the file leave defaults in place


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8123", "http://localhost:9000/x", "http://[::1]:80"]
)
def test_plain_http_to_this_machine_is_accepted_for_a_local_emulator(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    configure(
        monkeypatch, ANAM_API_KEY="anam-secret-key-0002", ANAM_AVATAR_ID="a", ANAM_API_URL=url
    )
    assert load_settings().anam_api_url == url


def test_a_token_that_expires_before_the_avatar_may_join_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    problems = problems_of(
        monkeypatch, AVATAR_TOKEN_TTL="50", AVATAR_START_TIMEOUT="30", AVATAR_JOIN_TIMEOUT="30"
    )
    assert [p.split(":")[0] for p in problems] == ["AVATAR_TOKEN_TTL"]
    assert "60" in problems[0]


def test_a_cloud_provider_needs_a_livekit_url_it_can_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = {"LEMONSLICE_API_KEY": "ls-secret-key-0001", "LEMONSLICE_AGENT_ID": "agent-7"}
    problems = problems_of(monkeypatch, LIVEKIT_URL="ws://10.1.2.3:7880", **provider)
    assert [p.split(":")[0] for p in problems] == ["LIVEKIT_URL"]
    assert "AVATAR_LIVEKIT_URL" in problems[0]

    configure(
        monkeypatch,
        LIVEKIT_URL="ws://10.1.2.3:7880",
        AVATAR_LIVEKIT_URL="wss://livekit.example.com",
        **provider,
    )
    settings = load_settings()
    assert settings.avatar_url == "wss://livekit.example.com"
    assert settings.livekit_url == "ws://10.1.2.3:7880"  # the worker keeps its internal URL


def test_a_provider_on_this_machine_reaches_a_loopback_livekit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(
        monkeypatch,
        LIVEKIT_URL="ws://127.0.0.1:7880",
        LEMONSLICE_API_KEY="ls-secret-key-0001",
        LEMONSLICE_AGENT_ID="agent-7",
        LEMONSLICE_API_URL="http://127.0.0.1:8000/api/liveai/sessions",
    )
    assert load_settings().avatar_url == "ws://127.0.0.1:7880"


def test_a_blank_agent_name_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, AGENT_NAME="")
    assert load_settings().agent_name == "avatar-agent"
    with pytest.raises(ConfigError, match="AGENT_NAME"):
        load_settings(agent_name="")


def test_only_the_lemonslice_avatar_joins_a_meeting(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = problems_of(
        monkeypatch,
        ANAM_API_KEY="anam-secret-key-0002",
        ANAM_AVATAR_ID="avatar-1",
        LEMONSLICE_MEETING_URL="https://zoom.us/j/1",
    )
    assert [p.split(":")[0] for p in problems] == ["LEMONSLICE_MEETING_URL"]


def test_the_meeting_url_stays_out_of_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(
        monkeypatch,
        LEMONSLICE_API_KEY="ls-secret-key-0001",
        LEMONSLICE_AGENT_ID="agent-1",
        LEMONSLICE_MEETING_URL="https://zoom.us/j/1?pwd=meeting-passcode",
    )
    settings = load_settings()
    assert settings.lemonslice_meeting_url == "https://zoom.us/j/1?pwd=meeting-passcode"
    assert "meeting-passcode" not in repr(settings) + str(settings)


LEMONSLICE = {"LEMONSLICE_API_KEY": "ls-secret-key-0001"}


@pytest.mark.parametrize(
    ("name", "content", "content_type"),
    [("face.png", png_face(), "image/png"), ("face.jpeg", jpeg_face(), "image/jpeg")],
)
def test_an_image_file_is_read_once_as_the_settings_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, content: bytes, content_type: str
) -> None:
    (tmp_path / name).write_bytes(content)
    configure(monkeypatch, **LEMONSLICE, LEMONSLICE_AGENT_IMAGE_PATH=name)  # relative: from the cwd
    settings = load_settings()
    (tmp_path / name).write_bytes(b"changed after start")
    image = settings.lemonslice_agent_image_path
    assert image is not None
    assert (image.content_type, image.data, image.path) == (content_type, content, Path(name))
    assert settings.provider == "lemonslice"
    assert str(content[:24]) not in repr(settings)  # the bytes stay out of the repr


def test_the_image_type_is_read_from_the_bytes_not_the_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "face.png").write_bytes(jpeg_face())
    configure(monkeypatch, **LEMONSLICE, LEMONSLICE_AGENT_IMAGE_PATH=str(tmp_path / "face.png"))
    image = load_settings().lemonslice_agent_image_path
    assert image is not None and image.content_type == "image/jpeg"
    assert image.upload_name == "image.jpg"


def _bad_image_path(tmp_path: Path, case: str) -> str:
    if case == "missing":
        return str(tmp_path / "nowhere.png")
    if case == "directory":
        return str(tmp_path)
    if case == "empty":
        (tmp_path / "empty.png").write_bytes(b"")
        return str(tmp_path / "empty.png")
    if case == "text":
        (tmp_path / "notes.png").write_text("this is not a picture\n")
        return str(tmp_path / "notes.png")
    if case == "gif":
        (tmp_path / "face.gif").write_bytes(b"GIF89a" + bytes(32))
        return str(tmp_path / "face.gif")
    if case == "cut png":  # the PNG signature, and nothing after it
        (tmp_path / "cut.png").write_bytes(png_face()[:8])
        return str(tmp_path / "cut.png")
    assert case == "unreadable"  # a file used as a directory: no open() can read it, even as root
    (tmp_path / "plain.png").write_bytes(png_face())
    return str(tmp_path / "plain.png" / "face.png")


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("missing", "no such file"),
        ("directory", "a directory, not an image file"),
        ("empty", "the file is empty"),
        ("text", "not a PNG or JPEG image"),
        ("gif", "not a PNG or JPEG image"),
        ("cut png", "not a PNG or JPEG image"),
        ("unreadable", "cannot be read"),
    ],
)
def test_an_unusable_image_file_is_named_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str, says: str
) -> None:
    path = _bad_image_path(tmp_path, case)
    problems = problems_of(monkeypatch, **LEMONSLICE, LEMONSLICE_AGENT_IMAGE_PATH=path)
    # One problem, about the file: not also "no face set" for the value that could not be used.
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"LEMONSLICE_AGENT_IMAGE_PATH: {says}")


def test_a_relative_image_path_that_is_missing_says_where_it_was_looked_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    problems = problems_of(monkeypatch, **LEMONSLICE, LEMONSLICE_AGENT_IMAGE_PATH="faces/me.png")
    assert problems == [
        f"LEMONSLICE_AGENT_IMAGE_PATH: no such file (a relative path is read from {tmp_path})"
    ]


@pytest.mark.parametrize(
    ("faces", "expected"),
    [
        (
            {"LEMONSLICE_AGENT_IMAGE_URL": "https://cdn.example.com/face.png"},
            "LEMONSLICE_AGENT_IMAGE_URL and LEMONSLICE_AGENT_IMAGE_PATH: both set; set exactly one",
        ),
        (
            {"LEMONSLICE_AGENT_ID": "agent-7"},
            "LEMONSLICE_AGENT_ID and LEMONSLICE_AGENT_IMAGE_PATH: both set; set exactly one",
        ),
        (
            {
                "LEMONSLICE_AGENT_ID": "agent-7",
                "LEMONSLICE_AGENT_IMAGE_URL": "https://cdn.example.com/face.png",
            },
            "LEMONSLICE_AGENT_ID and LEMONSLICE_AGENT_IMAGE_URL and LEMONSLICE_AGENT_IMAGE_PATH: "
            "all three set; set exactly one",
        ),
    ],
)
def test_an_image_file_beside_another_face_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, faces: dict[str, str], expected: str
) -> None:
    (tmp_path / "face.png").write_bytes(png_face())
    problems = problems_of(
        monkeypatch, **LEMONSLICE, LEMONSLICE_AGENT_IMAGE_PATH="face.png", **faces
    )
    assert problems == [expected]


def test_a_bad_image_url_is_not_also_reported_as_no_face(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = problems_of(monkeypatch, **LEMONSLICE, LEMONSLICE_AGENT_IMAGE_URL="face.png")
    assert [p.split(":")[0] for p in problems] == ["LEMONSLICE_AGENT_IMAGE_URL"]
