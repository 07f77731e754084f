"""Typed provider errors, one class per cause, built on livekit-agents' API error types.

Each carries the HTTP status, the provider's own error text and request id where there was a reply,
and never an API key or token: messages are composed from the reply, not from the request.
"""

from __future__ import annotations

from livekit.agents import APIConnectionError, APIStatusError, APITimeoutError


class AvatarProviderError(Exception):
    """Mixin marking every error raised by the avatar provider clients."""

    provider: str = "unknown"
    # True when the request may have been processed although no usable reply came back.
    may_have_reached: bool = False


class ProviderStatusError(APIStatusError, AvatarProviderError):
    """The provider answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int,
        provider_message: str | None = None,
        request_id: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(
            message,
            status_code=status_code,
            request_id=request_id,
            body=provider_message,
            retryable=retryable,
        )
        self.provider = provider
        self.provider_message = provider_message


class AuthenticationError(ProviderStatusError):
    """401: the API key (or session token) was refused."""


class PermissionDeniedError(ProviderStatusError):
    """403: the key is valid but may not do this."""


class PaymentRequiredError(ProviderStatusError):
    """402: no active plan or no credit."""


class BadRequestError(ProviderStatusError):
    """400/404/405/409/422: the request itself is wrong; retrying cannot help."""


class QuotaExceededError(ProviderStatusError):
    """429 that waiting will not fix: concurrent-session limit or spend cap reached."""


class RateLimitedError(ProviderStatusError):
    """429 (or 408) that may pass: retried, honouring Retry-After."""

    def __init__(self, *args: object, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ProviderUnavailableError(ProviderStatusError):
    """5xx: the provider is failing or overloaded."""

    def __init__(self, *args: object, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ProviderProtocolError(APIStatusError, AvatarProviderError):
    """A 2xx reply we cannot use: not JSON, or a required field missing or empty.

    Never retried: the provider may already have started (and be billing) a session.
    """

    def __init__(
        self, message: str, *, provider: str, status_code: int, request_id: str | None = None
    ) -> None:
        super().__init__(
            message, status_code=status_code, request_id=request_id, body=None, retryable=False
        )
        self.provider = provider


class ProviderConnectionError(APIConnectionError, AvatarProviderError):
    """The request failed on the network (refused, reset, closed before a reply)."""

    def __init__(self, message: str, *, provider: str, retryable: bool = True) -> None:
        super().__init__(message, retryable=retryable)
        self.provider = provider


class ProviderTimeoutError(APITimeoutError, AvatarProviderError):
    """No reply within the attempt timeout, or the whole call ran past its deadline."""

    def __init__(self, message: str, *, provider: str, retryable: bool = True) -> None:
        super().__init__(message, retryable=retryable)
        self.provider = provider


class AvatarJoinTimeoutError(AvatarProviderError, TimeoutError):
    """The provider accepted the session but its avatar did not join and publish video in time."""

    def __init__(self, provider: str, identity: str, timeout: float) -> None:
        super().__init__(
            f"{provider} avatar {identity!r} did not join the room with video within {timeout:g}s"
        )
        self.provider = provider


class AvatarLeftBeforeVideoError(AvatarProviderError, RuntimeError):
    """The provider's avatar joined the room and went again before it published any video."""

    def __init__(self, provider: str, identity: str, how: str) -> None:
        super().__init__(f"{provider} avatar {identity!r} {how} before publishing video")
        self.provider = provider
