"""Idempotency keys of job creation: a client that lost the answer to ``POST /api/v1/jobs``
retries with the same ``Idempotency-Key`` and gets the job it created, not a second one.

The first request with a key stores (owner, key) → job id, with the SHA-256 of the request,
in the transaction that inserts the job: both are committed, or neither. A UNIQUE constraint
on (owner, key) lets only one of two concurrent requests create; the other answers the
winner's job. Keys are kept ``KEY_TTL`` seconds: an expired key may be used again, and
expired rows are purged now and then by the creations themselves.

The lookup runs inside the write's ``work`` (``storage.group``): a second request in the same
group sees the first one's row and answers its job. A request that races another process
fails the group on the UNIQUE constraint; run ``alone``, it looks the key up again and answers
the job the other process committed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError

from jobmill.domain.errors import Conflict, ValidationError
from jobmill.domain.jobs import Job, NewJob
from jobmill.storage.group import Write
from jobmill.storage.tables import idempotency_keys, jobs
from jobmill.storage.writes import job_from_row

KEY_TTL = 24 * 3600.0
"""Seconds a key names its job; after that the key may be used again."""
MAX_KEY = 200
FIELD = "Idempotency-Key"
PURGE_EVERY = 600.0
"""Seconds between two purges of expired keys (by one process)."""
ATTEMPTS = 3

_LOOKUP = select(
    idempotency_keys.c.job_id, idempotency_keys.c.body_hash, idempotency_keys.c.created_at
).where(
    idempotency_keys.c.owner == bindparam("p_owner"),
    idempotency_keys.c.key == bindparam("p_key"),
)
_FORGET = delete(idempotency_keys).where(
    idempotency_keys.c.owner == bindparam("p_owner"),
    idempotency_keys.c.key == bindparam("p_key"),
    idempotency_keys.c.created_at < bindparam("p_cutoff"),
)
_PURGE = delete(idempotency_keys).where(idempotency_keys.c.created_at < bindparam("p_cutoff"))
_GET_JOB = select(jobs).where(jobs.c.id == bindparam("p_id"))


@dataclass(frozen=True)
class IdempotencyKey:
    """A caller's key for one creation, and the SHA-256 of what it asked for."""

    owner: str
    key: str
    body_hash: str


@dataclass(frozen=True)
class Created:
    """The jobs of a keyed creation; ``replayed``: created by an earlier request."""

    jobs: list[Job]
    replayed: bool


def check_key(value: str) -> str:
    """A key: 1 to ``MAX_KEY`` printable ASCII characters; else 422 naming the header."""
    if not 1 <= len(value) <= MAX_KEY or not all(" " <= c <= "~" for c in value):
        raise ValidationError(f"{FIELD}: 1 to {MAX_KEY} printable ASCII characters", field=FIELD)
    return value


def body_hash(body: Any) -> str:
    """The SHA-256 of a request body (JSON values), independent of the order of its keys."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


_purge_lock = threading.Lock()
_last_purge = 0.0


def _purge_due(now: float) -> bool:
    """True at most once every ``PURGE_EVERY`` seconds in this process."""
    global _last_purge
    with _purge_lock:
        if now - _last_purge < PURGE_EVERY:
            return False
        _last_purge = now
        return True


def purge(conn: Connection, now: float) -> int:
    """Delete the keys expired at ``now``; how many."""
    return conn.execute(_PURGE, {"p_cutoff": now - KEY_TTL}).rowcount or 0


def lookup(conn: Connection, key: IdempotencyKey, now: float) -> Job | None:
    """The job ``key`` created (None: the key is unused, or expired and now forgotten).

    409 naming the header when the key was used with another request, or its job is gone."""
    params = {"p_owner": key.owner, "p_key": key.key}
    row = conn.execute(_LOOKUP, params).first()
    if row is None:
        return None
    if row.created_at < now - KEY_TTL:
        conn.execute(_FORGET, {**params, "p_cutoff": now - KEY_TTL})
        return None
    if not hmac.compare_digest(row.body_hash, key.body_hash):
        raise Conflict(f"this {FIELD} was used for another request", field=FIELD)
    job_row = conn.execute(_GET_JOB, {"p_id": row.job_id}).first()
    if job_row is None:
        raise Conflict(f"the job created with this {FIELD} was deleted", field=FIELD)
    return job_from_row(job_row)


def create_write(
    engine: Engine,
    create_in: Callable[[Connection, Sequence[NewJob], str, bool], list[Job]],
    new_jobs: Sequence[NewJob],
    actor: str,
    key: IdempotencyKey,
) -> Write[Created]:
    """The group-commit write that creates ``new_jobs`` (through ``create_in``) unless ``key``
    already names a job, and records the key with them."""
    now = time.time()  # fixed here: a replay of ``work`` sees the same moment
    purge_now = _purge_due(now)

    def work(conn: Connection) -> Created:
        found = lookup(conn, key, now)
        if found is not None:
            if new_jobs[0].after:
                found.after = tuple(sorted(new_jobs[0].after))  # as the first answer had it
            return Created([found], True)
        if purge_now:
            purge(conn, now)
        created = create_in(conn, new_jobs, actor, True)
        conn.execute(
            insert(idempotency_keys),
            {
                "owner": key.owner,
                "key": key.key,
                "job_id": created[0].id,
                "body_hash": key.body_hash,
                "created_at": now,
            },
        )
        return Created(created, False)

    def alone() -> Created:
        for attempt in range(ATTEMPTS):
            try:
                with engine.begin() as conn:
                    return work(conn)
            except IntegrityError:
                # Another process committed this key first: the lookup now finds its job.
                if attempt == ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    return Write(work=work, alone=alone)
