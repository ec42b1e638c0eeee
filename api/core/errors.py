"""Domain errors: each carries the contract's error code, mapped to GraphQL in one place."""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    """A failure the client caused or can act on; its code goes to `extensions.code`."""

    code: ClassVar[str] = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def extensions(self) -> dict[str, Any]:
        # graphql-core copies `original_error.extensions` into the error it reports.
        return {"code": self.code}


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"

    def __init__(self, message: str = "You must be signed in.") -> None:
        super().__init__(message)


class Forbidden(DomainError):
    code = "FORBIDDEN"

    def __init__(self, message: str = "You are not a member of this room.") -> None:
        super().__init__(message)


class NotFound(DomainError):
    code = "NOT_FOUND"


class BadUserInput(DomainError):
    code = "BAD_USER_INPUT"


class Conflict(DomainError):
    code = "CONFLICT"


class ServiceUnavailable(DomainError):
    code = "SERVICE_UNAVAILABLE"

    def __init__(self, message: str = "The service is temporarily unavailable; retry.") -> None:
        super().__init__(message)


class RateLimited(DomainError):
    code = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms

    @property
    def extensions(self) -> dict[str, Any]:
        return {"code": self.code, "retryAfterMs": self.retry_after_ms}
