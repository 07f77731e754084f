"""One JSON-over-HTTP call with the shared retry policy, typed errors and orphan accounting.

Every provider client sends its requests through `ProviderHttp.post_json` / `get_json`; no provider has a
retry loop of its own. A JSON payload can also travel as a part of a multipart body beside a file
(`FormUpload`: LemonSlice's create with an uploaded face), under the same policy. The aiohttp session
is passed in (in a job: livekit-agents' pooled per-process session).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import aiohttp

from observability.tracing import note_retry, provider_call

from .errors import (
    AuthenticationError,
    BadRequestError,
    PaymentRequiredError,
    PermissionDeniedError,
    ProviderConnectionError,
    ProviderProtocolError,
    ProviderStatusError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    QuotaExceededError,
    RateLimitedError,
)
from .redact import redact, secrets_in
from .retry import OUTCOME_UNKNOWN_STATUSES, RETRYABLE_STATUSES, RetryPolicy, parse_retry_after

logger = logging.getLogger("avatar.providers.http")

REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "cf-ray")

# Reads the provider's human-readable error text out of an error body.
ErrorTextReader = Callable[[Any], str | None]
# What is wrong with a reply's required field, or None if it is usable.
FieldCheck = Callable[[str], str | None]
# Says whether a 429 is a hard limit (concurrency, spend cap) that waiting will not lift.
QuotaDetector = Callable[[str | None], bool]
# The provider's error as one of a few short codes we know (e.g. "spend cap"), else None.
ErrorCodeReader = Callable[[str | None], str | None]
# How much of a provider's error text is kept (in the error and the logs, never in the room).
PROVIDER_TEXT_LIMIT = 200


@dataclass(frozen=True)
class FormUpload:
    """Send a JSON payload as part `json_part` of a multipart/form-data body, beside one file.

    The file's bytes are held here, read once: every attempt sends the same bytes.
    """

    json_part: str
    file_part: str
    filename: str
    content_type: str
    data: bytes = field(repr=False)

    def form(self, payload: Mapping[str, Any]) -> aiohttp.FormData:
        """A new body for one attempt (some aiohttp versions refuse to send a FormData twice)."""
        form = aiohttp.FormData()
        form.add_field(self.json_part, json.dumps(payload), content_type="application/json")
        form.add_field(
            self.file_part, self.data, filename=self.filename, content_type=self.content_type
        )
        return form


@dataclass(frozen=True)
class _Request:
    method: str
    url: str
    payload: Mapping[str, Any] | None
    headers: Mapping[str, str] = field(repr=False)
    operation: str
    creates_session: bool = False
    required: str | None = None
    check_required: FieldCheck | None = None
    upload: FormUpload | None = None


@dataclass(frozen=True)
class PossibleOrphan:
    """A create call that may have started a provider session we hold no id for."""

    provider: str
    operation: str
    attempt: int
    reason: str


@dataclass
class ProviderHttp:
    session: aiohttp.ClientSession
    provider: str
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    read_error_text: ErrorTextReader = lambda body: None
    is_quota_exceeded: QuotaDetector = lambda text: False
    known_error_code: ErrorCodeReader = lambda text: None
    rng: random.Random = field(default_factory=random.Random)
    possible_orphans: list[PossibleOrphan] = field(default_factory=list)

    async def post_json(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        headers: Mapping[str, str],
        operation: str,
        creates_session: bool = False,
        required: str | None = None,
        check_required: FieldCheck | None = None,
        deadline: float | None = None,
        upload: FormUpload | None = None,
    ) -> dict[str, Any]:
        """POST `payload` as JSON, retrying per the policy; returns the decoded JSON object.

        With `upload`, the body is multipart/form-data: `payload` as one JSON part beside a file
        (`headers` then carry no Content-Type: aiohttp writes it, with the boundary).

        `required` names a field the reply must carry as a non-empty string (else a protocol error);
        `check_required` says what else is wrong with it, if anything (also a protocol error).

        `creates_session` marks a non-idempotent create. Neither provider offers an idempotency key
        or a lookup by our own reference, so a create that may have reached the provider (reply
        lost, timeout or connection dropped after sending, cancelled in flight, answered 500, 502
        or 504) is never retried: a second create would be a second billed session. It is
        recorded in `possible_orphans`, logged, and raised. What cannot have created anything
        (connection refused, a refusal such as 503 or 429) is retried as usual.
        `deadline` (loop time) caps the call further, e.g. by the avatar start's own deadline.
        """
        request = _Request(
            "POST",
            url,
            payload,
            headers,
            operation,
            creates_session,
            required,
            check_required,
            upload,
        )
        return await self._call(request, deadline)

    async def get_json(
        self, url: str, *, headers: Mapping[str, str], operation: str, deadline: float | None = None
    ) -> dict[str, Any]:
        return await self._call(_Request("GET", url, None, headers, operation), deadline)

    async def _call(self, request: _Request, deadline: float | None) -> dict[str, Any]:
        with provider_call(self.provider, request.operation, request.method):
            return await self._call_with_retries(request, deadline)

    async def _call_with_retries(self, request: _Request, deadline: float | None) -> dict[str, Any]:
        operation = request.operation
        loop = asyncio.get_running_loop()
        call_deadline = loop.time() + self.policy.call_deadline
        if deadline is not None:
            call_deadline = min(call_deadline, deadline)

        for attempt in range(1, self.policy.max_attempts + 1):
            remaining = call_deadline - loop.time()
            if remaining <= 0:
                raise self._deadline_error(operation, attempt - 1)
            try:
                return await self._attempt(
                    request, min(self.policy.attempt_timeout, remaining), attempt
                )
            except (
                ProviderStatusError,
                ProviderProtocolError,
                ProviderConnectionError,
                ProviderTimeoutError,
            ) as error:
                if request.creates_session and error.may_have_reached:
                    self._log_final(operation, attempt, error)
                    self._record_orphan(operation, attempt, f"attempt {attempt}: {_summary(error)}")
                    error.retryable = False  # nobody may send this create again
                    raise
                if not error.retryable or attempt == self.policy.max_attempts:
                    self._log_final(operation, attempt, error)
                    raise
                delay = self.policy.retry_delay(
                    attempt - 1, getattr(error, "retry_after", None), self.rng
                )
                if loop.time() + delay >= call_deadline:
                    if isinstance(error, ProviderStatusError):
                        self._log_final(operation, attempt, error)
                        raise  # the provider's own answer says more than "out of time"
                    raise self._deadline_error(operation, attempt) from error
                logger.warning(
                    "%s %s failed (attempt %d of %d: %s); retrying in %.2fs",
                    self.provider,
                    operation,
                    attempt,
                    self.policy.max_attempts,
                    _summary(error),
                    delay,
                    extra={"provider": self.provider, "operation": operation, "attempt": attempt},
                )
                note_retry(attempt, error, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    async def _attempt(
        self, request: _Request, attempt_timeout: float, attempt: int
    ) -> dict[str, Any]:
        try:
            return await self._exchange(request, attempt_timeout)
        except asyncio.CancelledError:
            # Cut off by a caller's deadline or the job's end: the body may already be with the provider.
            if request.creates_session:
                self._record_orphan(request.operation, attempt, "cancelled in flight")
            raise

    async def _exchange(self, request: _Request, attempt_timeout: float) -> dict[str, Any]:
        operation = request.operation
        sent = False
        try:
            async with self.session.request(
                request.method,
                request.url,
                **_body(request),
                headers=dict(request.headers),
                timeout=aiohttp.ClientTimeout(total=attempt_timeout),
                allow_redirects=False,
            ) as response:
                sent = True
                raw = await response.read()
                request_id = _request_id(response.headers)
                if not 200 <= response.status < 300:
                    raise self._status_error(request, response, raw, request_id)
                return self._decode(request, response.status, raw, request_id)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            raise ProviderConnectionError(
                f"{self.provider} {operation}: could not connect ({type(error).__name__})",
                provider=self.provider,
            ) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            timeout_error = ProviderTimeoutError(
                f"{self.provider} {operation}: no reply within {attempt_timeout:.3g}s",
                provider=self.provider,
            )
            timeout_error.may_have_reached = True
            raise timeout_error from None
        except aiohttp.ClientError as error:
            connection_error = ProviderConnectionError(
                f"{self.provider} {operation}: connection failed "
                f"{'after sending' if sent else 'while sending'} ({type(error).__name__})",
                provider=self.provider,
            )
            connection_error.may_have_reached = True
            raise connection_error from None

    def _decode(
        self, request: _Request, status: int, raw: bytes, request_id: str | None
    ) -> dict[str, Any]:
        operation, required = request.operation, request.required
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        problem = None
        if not isinstance(body, dict):
            problem = "is not a JSON object"
        elif required is not None:
            value = body.get(required)
            if not isinstance(value, str) or not value.strip():
                problem = (
                    f"has no {required}" if value is None else f"has an empty or invalid {required}"
                )
            elif request.check_required is not None and (wrong := request.check_required(value)):
                problem = f"has an unusable {required} ({wrong})"
        if problem is not None:
            error = ProviderProtocolError(
                f"{self.provider} {operation}: reply {status} {problem}",
                provider=self.provider,
                status_code=status,
                request_id=request_id,
            )
            error.may_have_reached = True
            raise error
        assert isinstance(body, dict)
        return body

    def _status_error(
        self,
        request: _Request,
        response: aiohttp.ClientResponse,
        raw: bytes,
        request_id: str | None,
    ) -> ProviderStatusError:
        """The typed error of an error answer.

        Its message is composed by us (provider, operation, status, a known error code): it ends up
        in `avatar.reason`, which everyone in the room sees. The provider's own text is kept apart
        (`provider_message`, for logs), with every credential of the request taken out first.
        """
        operation = request.operation
        status = response.status
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        text = self.read_error_text(body) if body is not None else None
        if text is None and raw and body is None:
            text = raw.decode("utf-8", "replace")
        if text is not None:
            secrets = secrets_in(request.headers, request.payload)
            text = redact(text, secrets)[:PROVIDER_TEXT_LIMIT]
        code = self.known_error_code(text)
        message = f"{self.provider} {operation} failed: {_status_line(status)}" + (
            f" ({code})" if code else ""
        )
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        common: dict[str, Any] = {
            "provider": self.provider,
            "status_code": status,
            "provider_message": text,
            "request_id": request_id,
        }
        error: ProviderStatusError
        if status == 401:
            error = AuthenticationError(message, **common)
        elif status == 402:
            error = PaymentRequiredError(message, **common)
        elif status == 403:
            error = PermissionDeniedError(message, **common)
        elif status == 429 and self.is_quota_exceeded(text):
            error = QuotaExceededError(message, retryable=False, **common)
        elif status in (408, 429):
            error = RateLimitedError(message, retry_after=retry_after, **common)
        elif status >= 500:
            error = ProviderUnavailableError(
                message, retry_after=retry_after, retryable=status in RETRYABLE_STATUSES, **common
            )
        else:
            # Other 4xx (499 included) and the 3xx we do not follow: asking again gets the same answer.
            error = BadRequestError(message, retryable=False, **common)
        # A refusal made nothing; a 500, 502 or 504 leaves unknown whether the request was acted on.
        error.may_have_reached = status in OUTCOME_UNKNOWN_STATUSES
        return error

    def _deadline_error(self, operation: str, attempts: int) -> ProviderTimeoutError:
        return ProviderTimeoutError(
            f"{self.provider} {operation}: no usable reply within the {self.policy.call_deadline:g}s "
            f"call deadline after {attempts} attempt(s)",
            provider=self.provider,
            retryable=False,
        )

    def _log_final(self, operation: str, attempt: int, error: Exception) -> None:
        """The provider's own words on a failure we give up on: for the logs, never the room."""
        if isinstance(error, ProviderStatusError) and error.provider_message:
            logger.warning(
                "%s %s failed (attempt %d): %s; the provider said: %s",
                self.provider,
                operation,
                attempt,
                _summary(error),
                error.provider_message,
                extra={"provider": self.provider, "operation": operation, "attempt": attempt},
            )

    def _record_orphan(self, operation: str, attempt: int, reason: str) -> None:
        orphan = PossibleOrphan(self.provider, operation, attempt, reason)
        self.possible_orphans.append(orphan)
        logger.warning(
            "%s %s may have reached the provider before failing (%s): a session may have been "
            "started that we cannot end; counted as a possible orphan and not retried",
            self.provider,
            operation,
            reason,
            extra={"provider": self.provider, "operation": operation, "possible_orphan": True},
        )


def _body(request: _Request) -> dict[str, Any]:
    """The body's keyword for aiohttp: JSON, or a fresh multipart form for this attempt."""
    if request.upload is not None and request.payload is not None:
        return {"data": request.upload.form(request.payload)}
    return {"json": request.payload}


def _request_id(headers: Mapping[str, str]) -> str | None:
    for name in REQUEST_ID_HEADERS:
        if value := headers.get(name):
            return value
    return None


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _summary(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    name = type(error).__name__
    return f"{name} {status}" if isinstance(status, int) and status > 0 else name
