"""Errors a user can cause. Each carries a kind, a stable code, an HTTP status and, where it
applies, a field.

The kind says what the caller can do about the error, and every face maps kinds the same way
(``KINDS``): the native, ARP and rules faces answer the error's status, UWS and OCPS answer 400
for every usage error and UWS 403 for a conflict (UWS 1.1 §2.2), and the CLI exits 2 for a
usage error and 1 for any other. ``CODES`` lists every stable code (docs/api.md has the table).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Literal


class Kind(StrEnum):
    """What the caller can do about an error."""

    USAGE = "usage"  # the request is wrong: change it (retrying it as it is fails again)
    DENIED = "denied"  # no valid credentials, or the caller may not do this
    NOT_FOUND = "not_found"  # no such thing (or not visible to the caller)
    CONFLICT = "conflict"  # illegal in the current state, or lost a race: look, then decide
    TRANSIENT = "transient"  # try again later: a per-user limit, a full disk, a backend away
    FATAL = "fatal"  # the server cannot do it (a tool it lacks, a log it cannot read)


@dataclass(frozen=True)
class KindRule:
    """How the faces answer errors of one kind."""

    status: int  # the HTTP status of an error of this kind that names none of its own
    uws: int | None = None  # what UWS answers instead (None: the error's own status)
    ocps: int | None = None  # what OCPS answers instead (None: the error's own status)
    exit_code: int = 1  # the CLI's exit status


KINDS: dict[Kind, KindRule] = {
    Kind.USAGE: KindRule(400, uws=400, ocps=400, exit_code=2),
    Kind.DENIED: KindRule(403),
    Kind.NOT_FOUND: KindRule(404),
    Kind.CONFLICT: KindRule(409, uws=403),  # UWS: the request is illegal in the current phase
    Kind.TRANSIENT: KindRule(503),
    Kind.FATAL: KindRule(500),
}
"""Kind -> how every face answers it (one table: the faces only look it up)."""

CODES: dict[str, Kind] = {
    "bad_request": Kind.USAGE,  # 400 a malformed request, or a Host this server does not serve
    "invalid": Kind.USAGE,  # 422 a value is missing, unknown, mistyped or out of range
    "too_large": Kind.USAGE,  # 413 the request body is over its limit
    "method_not_allowed": Kind.USAGE,  # 405 the path does not take this method
    "unauthorized": Kind.DENIED,  # 401 no valid bearer token
    "forbidden": Kind.DENIED,  # 403 not allowed to the caller, or a cross-origin request
    "not_found": Kind.NOT_FOUND,  # 404 no such job, job type or resource (or not the caller's)
    "no_log": Kind.NOT_FOUND,  # 404 the job has written no log (yet)
    "conflict": Kind.CONFLICT,  # 409 illegal in the current state, or a name already taken
    "too_many": Kind.TRANSIENT,  # 429 a per-user limit is reached
    "insufficient_storage": Kind.TRANSIENT,  # 507 the server's disk is (nearly) full
    "backend_unavailable": Kind.TRANSIENT,  # 503 the job's batch system cannot be asked now
    "log_unreadable": Kind.FATAL,  # 503 the log exists but the server cannot read it
    "unavailable": Kind.FATAL,  # 503 the server lacks what the answer needs
}
"""Every stable error code and its kind (docs/api.md has the table). A code never changes
meaning; a new one is added here and there."""

Face = Literal["native", "uws", "ocps"]


def kind_of(code: str, status: int = 0) -> Kind:
    """The kind of an error code; for a code not in ``CODES`` (``http_502``), of its status."""
    if code in CODES:
        return CODES[code]
    if status in (401, 403):
        return Kind.DENIED
    if status in (404, 410):
        return Kind.NOT_FOUND
    if status == 409:
        return Kind.CONFLICT
    if status in (0, 408, 429, 502, 503, 504, 507):
        return Kind.TRANSIENT
    return Kind.USAGE if 400 <= status < 500 else Kind.FATAL


def http_status(error: JobmillError, face: Face = "native") -> int:
    """The status ``face`` answers ``error`` with (``KINDS``)."""
    rule = KINDS[error.kind]
    instead = rule.uws if face == "uws" else rule.ocps if face == "ocps" else None
    return error.status if instead is None else instead


def exit_code(kind: Kind) -> int:
    """The CLI's exit status for an error of ``kind``."""
    return KINDS[kind].exit_code


class JobmillError(Exception):
    """Base class: an error a request can meet, rendered by every face from its kind.

    A subclass sets ``code`` (a key of ``CODES``); its ``kind`` follows from the code and its
    ``status`` from the kind (``KINDS``), unless it sets a more precise one (422, 401, 429...).
    """

    kind: ClassVar[Kind] = Kind.USAGE
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.code not in CODES:
            raise TypeError(f"{cls.__name__}: code '{cls.code}' is not in domain.errors.CODES")
        if "code" in cls.__dict__:  # a new code: its kind, and the kind's status by default
            if "kind" not in cls.__dict__:
                cls.kind = CODES[cls.code]
            if "status" not in cls.__dict__:
                cls.status = KINDS[cls.kind].status

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

    code = "not_found"


class Conflict(JobmillError):
    """The request is illegal in the job's current phase, or lost a race."""

    code = "conflict"


class Forbidden(JobmillError):
    """The caller may not do this."""

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
