"""Short job ids: wherever a command takes a job id, the start of one will do.

``resolve(jm, "3f2a")`` asks the server for the jobs whose id starts so
(``GET /api/v1/jobs?id_prefix=``, served by the unique index on the id) and returns the one full
id; none is a not-found error and several are an error listing them. A full id (with or without
dashes) is returned as it is, without a request.
"""

from __future__ import annotations

import re
import uuid

from jobmill.client import Client, JobmillClientError

MIN_PREFIX = 1
SHOWN = 10
"""How many candidates an ambiguous prefix lists."""

_PREFIX = re.compile(r"[0-9a-f][0-9a-f-]{0,35}")


class AmbiguousId(JobmillClientError):
    """A short id that starts several jobs' ids."""

    def __init__(self, raw: str, candidates: list[str], more: bool) -> None:
        listed = ", ".join(candidates) + (", ..." if more else "")
        super().__init__(
            409,
            "conflict",
            f"job id '{raw}' is ambiguous: it starts {listed}; give more of it",
            "id",
        )
        self.candidates = candidates


def full_id(raw: str) -> str | None:
    """``raw`` as a canonical job id when it is a whole one (32 hex digits, dashes or not)."""
    text = raw.strip()
    if len(text.replace("-", "")) != 32:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def resolve(jm: Client, raw: str) -> str:
    """The full id of the one job (visible to the caller) whose id starts with ``raw``."""
    whole = full_id(raw)
    if whole is not None:
        return whole
    prefix = raw.strip().lower()
    if not _PREFIX.fullmatch(prefix):
        raise JobmillClientError(
            422, "invalid", f"'{raw}' is not a job id nor the start of one (hex digits)", "id"
        )
    page = jm.list(id_prefix=prefix, limit=SHOWN + 1)
    found = [job["id"] for job in page.jobs]
    if not found:
        raise JobmillClientError(404, "not_found", f"no job whose id starts with '{raw}'", "id")
    if len(found) > 1:
        raise AmbiguousId(raw, found[:SHOWN], len(found) > SHOWN)
    return str(found[0])
