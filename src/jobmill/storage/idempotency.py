"""Idempotency keys of job creation: a client that lost the answer to ``POST /api/v1/jobs``
(or ``/jobs/batch``) retries with the same ``Idempotency-Key`` and gets the job (the jobs) it
created, not a second one.

The first request with a key stores (owner, key) → job id (a batch: the ids of all its jobs),
with the SHA-256 of the request, in the transaction that inserts the jobs: all are committed, or
none. A UNIQUE constraint
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
    idempotency_keys.c.job_id,
    idempotency_keys.c.job_ids,
    idempotency_keys.c.body_hash,
    idempotency_keys.c.created_at,
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
_GET_JOBS = select(jobs).where(jobs.c.id.in_(bindparam("p_ids", expanding=True)))


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


def lookup(conn: Connection, key: IdempotencyKey, now: float) -> list[Job] | None:
    """The jobs ``key`` created, in order (None: the key is unused, or expired and now
    forgotten).

    409 naming the header when the key was used with another request, or a job of it is
    gone."""
    params = {"p_owner": key.owner, "p_key": key.key}
    row = conn.execute(_LOOKUP, params).first()
    if row is None:
        return None
    if row.created_at < now - KEY_TTL:
        conn.execute(_FORGET, {**params, "p_cutoff": now - KEY_TTL})
        return None
    if not hmac.compare_digest(row.body_hash, key.body_hash):
        raise Conflict(f"this {FIELD} was used for another request", field=FIELD)
    ids = json.loads(row.job_ids) if row.job_ids else [row.job_id]
    found = {r.id: job_from_row(r) for r in conn.execute(_GET_JOBS, {"p_ids": ids})}
    if len(found) < len(ids):
        raise Conflict(f"a job created with this {FIELD} was deleted", field=FIELD)
    return [found[job_id] for job_id in ids]


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
            for job, new in zip(found, new_jobs, strict=False):
                if new.after:
                    job.after = tuple(sorted(new.after))  # as the first answer had it
            return Created(found, True)
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
                "job_ids": json.dumps([job.id for job in created]) if len(created) > 1 else None,
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
