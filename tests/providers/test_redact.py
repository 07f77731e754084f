"""Secrets out of a provider's error text: the request's own credentials, and anything JWT-shaped."""

from __future__ import annotations

from providers.redact import REDACTED, redact, secrets_in
from tests.providers.conftest import avatar_token


def test_the_credentials_of_a_request_are_its_auth_headers_and_its_secret_fields() -> None:
    token = avatar_token()
    found = secrets_in(
        {"X-API-Key": "ls-key-12345678", "Authorization": "Bearer sess-abcdefgh", "Accept": "x"},
        {
            "properties": {"livekit_url": "wss://example.livekit.cloud", "livekit_token": token},
            "environment": [{"livekitToken": "tok-87654321"}],
            "agent_id": "agent-7-not-a-secret",
        },
    )
    assert found == {
        "ls-key-12345678",
        "Bearer sess-abcdefgh",
        "sess-abcdefgh",
        token,
        "tok-87654321",
    }


def test_redact_takes_out_the_given_secrets_and_any_jwt_whole_or_cut() -> None:
    token = avatar_token()
    text = f"key ls-key-12345678 and {token} and cut {token[:60]}"
    cleaned = redact(text, {"ls-key-12345678"})
    assert cleaned == f"key {REDACTED} and {REDACTED} and cut {REDACTED}"
    assert redact("no secret at all, eyJ short") == "no secret at all, eyJ short"
