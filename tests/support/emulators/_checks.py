"""Request validation helpers. Error messages name fields, never echo values (they may be secrets)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from yarl import URL

from ._records import RecordedRequest

_BASE64URL = re.compile(r"^[A-Za-z0-9_-]+$")


class Rejected(Exception):
    """The emulator refuses the request with `status` and a provider-shaped error body."""

    def __init__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def json_object_body(record: RecordedRequest) -> dict[str, Any]:
    if record.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
        raise Rejected(400, "Content-Type must be application/json")
    if not record.is_json:
        raise Rejected(400, "request body is not valid JSON")
    if not isinstance(record.json, dict):
        raise Rejected(400, "request body must be a JSON object")
    return record.json


@dataclass(frozen=True)
class FormPart:
    """One part of a multipart/form-data body."""

    name: str
    filename: str | None
    content_type: str | None
    """As the part declared it; None when it declared none."""
    data: bytes = field(repr=False)


def content_type_of(record: RecordedRequest) -> str:
    return record.headers.get("Content-Type", "").split(";")[0].strip().lower()


def multipart_form(record: RecordedRequest) -> dict[str, FormPart]:
    """The parts of a multipart/form-data body by name; a malformed body or a repeated name is refused."""
    if content_type_of(record) != "multipart/form-data":
        raise Rejected(400, "Content-Type must be multipart/form-data")
    header = record.headers["Content-Type"].encode("latin-1", "replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + header + b"\r\n\r\n" + record.body
    )
    if (
        not isinstance(message, EmailMessage)
        or not message.is_multipart()
        or not message.get_boundary()
        or message.defects
    ):
        raise Rejected(400, "malformed multipart body")
    parts: dict[str, FormPart] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.defects or part.get_content_disposition() != "form-data" or not name:
            raise Rejected(400, "malformed multipart body: a part without a form-data name")
        name = str(name)
        if name in parts:
            raise Rejected(400, f"part {name!r} given more than once")
        data = part.get_payload(decode=True)
        parts[name] = FormPart(
            name=name,
            filename=part.get_filename(),
            content_type=part.get_content_type() if "Content-Type" in part else None,
            data=data if isinstance(data, bytes) else b"",
        )
    return parts


def json_part(part: FormPart) -> dict[str, Any]:
    """A form part that carries a JSON object, as a JSON body would."""
    if part.filename is not None:
        raise Rejected(400, f"part {part.name!r} must be a form field, not a file")
    if part.content_type != "application/json":
        raise Rejected(400, f"part {part.name!r} must have Content-Type application/json")
    try:
        value = json.loads(part.data)
    except ValueError:
        raise Rejected(400, f"part {part.name!r} is not valid JSON") from None
    if not isinstance(value, dict):
        raise Rejected(400, f"part {part.name!r} must be a JSON object")
    return value


def check_parts(
    parts: Mapping[str, FormPart], *, required: Collection[str], optional: Collection[str] = ()
) -> None:
    for name in parts:
        if name not in required and name not in optional:
            raise Rejected(400, f"unexpected part {name!r}")
    for name in required:
        if name not in parts:
            raise Rejected(400, f"missing required part {name!r}")


def check_keys(
    obj: Mapping[str, Any], *, where: str, required: Collection[str], optional: Collection[str] = ()
) -> None:
    for key in obj:
        if key not in required and key not in optional:
            raise Rejected(400, f"unexpected field {_path(where, key)!r}")
    for key in required:
        if key not in obj:
            raise Rejected(400, f"missing required field {_path(where, key)!r}")


def sub_object(obj: Mapping[str, Any], key: str, *, where: str) -> dict[str, Any]:
    value = obj[key]
    if not isinstance(value, dict):
        raise Rejected(400, f"{_path(where, key)!r} must be an object")
    return value


def check_str(obj: Mapping[str, Any], key: str, *, where: str, non_empty: bool = True) -> str:
    value = obj[key]
    if not isinstance(value, str) or (non_empty and not value.strip()):
        kind = "a non-empty string" if non_empty else "a string"
        raise Rejected(400, f"{_path(where, key)!r} must be {kind}")
    return value


def check_int(obj: Mapping[str, Any], key: str, *, where: str, minimum: int | None = None) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejected(400, f"{_path(where, key)!r} must be an integer")
    if minimum is not None and value < minimum:
        raise Rejected(400, f"{_path(where, key)!r} must be at least {minimum}")
    return value


def check_number(obj: Mapping[str, Any], key: str, *, where: str) -> float:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise Rejected(400, f"{_path(where, key)!r} must be a non-negative number")
    return float(value)


def check_bool(obj: Mapping[str, Any], key: str, *, where: str) -> bool:
    value = obj[key]
    if not isinstance(value, bool):
        raise Rejected(400, f"{_path(where, key)!r} must be a boolean")
    return value


def check_choice(obj: Mapping[str, Any], key: str, choices: Collection[Any], *, where: str) -> Any:
    value = obj[key]
    if isinstance(value, bool) or value not in choices:
        allowed = ", ".join(str(choice) for choice in choices)
        raise Rejected(400, f"{_path(where, key)!r} must be one of: {allowed}")
    return value


def check_url(obj: Mapping[str, Any], key: str, schemes: Collection[str], *, where: str) -> str:
    value = check_str(obj, key, where=where)
    try:
        url = URL(value)
    except ValueError:
        url = None
    if url is None or url.scheme not in schemes or not url.host:
        raise Rejected(400, f"{_path(where, key)!r} must be a {'/'.join(schemes)} URL")
    return value


def check_token(obj: Mapping[str, Any], key: str, *, where: str, require_jwt: bool) -> str:
    value = check_str(obj, key, where=where)
    if require_jwt and not looks_like_jwt(value):
        raise Rejected(400, f"{_path(where, key)!r} must be a JWT")
    return value


def looks_like_jwt(value: str) -> bool:
    """Three base64url parts whose first decodes to a JSON object naming an algorithm."""
    parts = value.split(".")
    if len(parts) != 3 or not all(_BASE64URL.match(part) for part in parts):
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return isinstance(header, dict) and "alg" in header


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
