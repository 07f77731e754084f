"""Taking secrets out of text that came from elsewhere (a provider's error body) before it is kept.

A provider may echo what we sent it, and what we send carries the API key, a session token and the
avatar's LiveKit join token. Any of them that appears in the text is replaced, and so is anything
shaped like a JWT, whole or cut short.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "***"
# A JWT (base64url JSON header, "eyJ"), or a piece of one long enough to matter.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,2}")
# Shorter values are not worth hunting for (and would match ordinary words).
_MIN_SECRET = 8
_SECRET_NAME = re.compile(r"token|key|secret|authorization|password", re.IGNORECASE)


def secrets_in(headers: Mapping[str, str], payload: Any) -> set[str]:
    """The credentials a request carries: its auth headers' values and its payload's secret fields."""
    found: set[str] = set()
    for name, value in headers.items():
        if _SECRET_NAME.search(name) and value:
            found.add(value)
            found.add(value.split(" ", 1)[-1])  # without its "Bearer " scheme
    _collect(payload, found)
    return {secret for secret in found if len(secret) >= _MIN_SECRET}


def _collect(value: Any, found: set[str], name: str = "") -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _collect(item, found, str(key))
    elif isinstance(value, list | tuple):
        for item in value:
            _collect(item, found, name)
    elif isinstance(value, str) and _SECRET_NAME.search(name):
        found.add(value)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET:
            text = text.replace(secret, REDACTED)
    return _JWT.sub(REDACTED, text)
