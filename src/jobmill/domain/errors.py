"""Errors a user can cause. Each carries a code, an HTTP status and, where it applies, a field."""

from __future__ import annotations

from typing import Any


class JobmillError(Exception):
    """Base class: a problem the caller can fix, rendered by every face as a 4xx answer."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, **extra: Any) -> None:
        message = printable(message)
        super().__init__(message)
        self.message = message
        self.field = None if field is None else printable(field)
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.extra)
        return body


def printable(text: str) -> str:
    """``text`` with lone surrogates (which no response can encode) written as ``\\udXXX``:
    a message or a field name that quotes bad input can always be sent back."""
    text = str(text)
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ValidationError(JobmillError):
    """A request value is missing, unknown, mistyped or out of range."""

    status = 422
    code = "invalid"


class NotFound(JobmillError):
    """No such job, job type or resource (or not visible to the caller)."""

    status = 404
    code = "not_found"


class Conflict(JobmillError):
    """The request is illegal in the job's current phase, or lost a race."""

    status = 409
    code = "conflict"


class Forbidden(JobmillError):
    """The caller may not do this."""

    status = 403
    code = "forbidden"


class Unauthorized(JobmillError):
    """No valid credentials."""

    status = 401
    code = "unauthorized"


class TooMany(JobmillError):
    """A per-user limit is reached (429): the caller has too much going on already."""

    status = 429
    code = "too_many"


class InsufficientStorage(JobmillError):
    """The server's disk is (nearly) full (507): nothing was created; try again later."""

    status = 507
    code = "insufficient_storage"


class JobTypeFileError(Exception):
    """A job type file is broken: names the file, the line and the problem."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem
