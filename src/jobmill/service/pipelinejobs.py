"""PipelineJobs: creating PipelineJobs, their named events, and automatic indexing.

``PipelineService`` is what the faces call: ``create`` (a job, its PipelineJobs row, its
update token and its ``create`` history entry, together), ``post`` (one named event, whichever
way it came in: a JSON event, URL parameters, an Agave callback), ``status`` and ``history``.

Who may send an event: the job's owner or an administrator (a bearer token), or whoever holds
the job's update token (random, 128 bits, stored hashed, shown once at creation; it authorises
events for that one job and nothing else), or a nonce the job's owner issued (``x-nonce``:
the events it lists, for that job, until it expires or is revoked). ``create`` is never an
event: it is written when a user with a bearer token (a *manager*) creates the job. ``reset``
and ``ready`` need an administrator.

``PipelineWatcher`` is one thread that reads the events table from a cursor (as the job rules
do): a job that jobmill runs gets run/finish/fail history entries from its own phases; a
finished job whose type declares an ``indexer`` gets one ``index`` event and its indexer job,
in one transaction; the end of an indexer job sends ``indexed`` (or ``fail``) to the job it
indexed. Each of those entries has a uuid derived from what caused it, unique in the history,
so a restart, a second pass or a second jobmill process never repeats one.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import secrets
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from jobmill.domain.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationError
from jobmill.domain.jobs import Job, JobRequest, NewJob, parse_job_id, utcnow
from jobmill.domain.lifecycle import Phase
from jobmill.domain.pipelinejobs import (
    ADMIN_EVENTS,
    EXTERNAL,
    PHASE_EVENTS,
    RESERVED_EVENTS,
    HistoryEntry,
    Nonce,
    PipelineEvent,
    PipelineStatus,
    State,
    authorise,
    parse_event,
)
from jobmill.domain.users import User
from jobmill.domain.values import check_value
from jobmill.service.failures import FailureLog
from jobmill.service.jobs import JobService
from jobmill.service.worker import Worker
from jobmill.storage.group import Write
from jobmill.storage.pipelinejobs import (
    Applied,
    PhaseChange,
    PipelineRecord,
    PipelineStore,
    duplicate,
)
from jobmill.storage.tokens import hash_secret

log = logging.getLogger(__name__)

NAMESPACE = uuid.UUID("5f0c1f0e-8a53-4f0a-9d3e-6c1b3f7a2e11")
"""The namespace of the event uuids jobmill derives (repeated deliveries, automatic events)."""
FINGERPRINT_NAMESPACE = uuid.UUID("0c5d7a2e-3b9f-5e41-8f6a-2d4b1c9e7a30")
"""The namespace of PipelineJobs fingerprints (``fingerprint``)."""
RERUN_STATES: frozenset[State] = frozenset({State.FAILED, State.REJECTED, State.RETIRED})
"""The states in which a PipelineJob hands its fingerprint over to a new create of the same
job (a re-run): its outcome is not to be used. In any other state a second create of the
same job is a duplicate (409): it is under way, its products are good, or it was reset (an
administrator's ``ready`` runs it again)."""
MAX_EVENT_ID = 256
ACTOR = "pipelinejobs"
UPDATE_TOKEN_ACTOR = "update-token"  # noqa: S105 - who sent it, not a secret
BATCH = 1000
LOOKBACK = 1000
NONCE_LIFETIME = 86400
MAX_NONCE_LIFETIME = 30 * 86400


def event_uuid(job_id: str, key: str) -> str:
    """The uuid of the event ``key`` of a job: the same for every delivery of the same event."""
    return str(uuid.uuid5(NAMESPACE, f"{job_id}/{key}"))


def fingerprint(new: NewJob, pipeline_uuid: str | None = None) -> str:
    """What makes two creates the same PipelineJob, as a UUID5 over a canonical JSON: the
    reference's ``pipeline_uuid``, ``child_of`` and ``data`` (the job's type and parameters, as
    validated: defaults filled in, values typed), scoped to the job's owner. The job's id stays
    random; this is a column of its own, unique."""
    parents = sorted({*new.after, *([new.parent_id] if new.parent_id else [])})
    canonical = json.dumps(
        {
            "owner": new.owner,
            "pipeline_uuid": pipeline_uuid,
            "type": new.type,
            "parameters": {**new.extra_parameters, **new.parameters},
            "child_of": parents,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return str(uuid.uuid5(FINGERPRINT_NAMESPACE, canonical))


@dataclass(frozen=True)
class Caller:
    """Who sends an event: a user (bearer token), the job's update token, a nonce."""

    user: User | None = None
    token: str | None = None
    nonce: str | None = None


@dataclass(frozen=True)
class Created:
    """A new PipelineJob: the job, its status, its update token (shown only now) and its
    ``create`` history entry."""

    job: Job
    status: PipelineRecord
    token: str
    entry: HistoryEntry
    rerun_of: str | None = None
    """The job (FAILED, REJECTED or RETIRED) whose fingerprint this one took over."""


class PipelineService:
    """PipelineJobs over the job service."""

    def __init__(self, store: PipelineStore, jobs: JobService) -> None:
        self.store = store
        self.jobs = jobs
        self.watcher: PipelineWatcher | None = None

    # -- creation ---------------------------------------------------------------------------

    def create(
        self, user: User, request: JobRequest, data: Mapping[str, Any] | None = None
    ) -> Created:
        """Create a PipelineJob (a manager's act: a user with a bearer token). An ``external``
        job is created PENDING: its ``run`` event starts it. The same job (``fingerprint``)
        created again is a duplicate (409 naming it; nothing is written), unless that one is
        FAILED, REJECTED or RETIRED (``RERUN_STATES``): then the new job is its re-run."""
        if user.reader:
            raise Unauthorized("creating a PipelineJob needs a bearer token", field="Authorization")
        if request.wait_for is not None:
            raise ValidationError("a PipelineJob cannot wait for data", field="wait_for")
        payload = check_value(dict(data or {}), "data")
        with self.jobs.room():
            new = self.jobs.validate(user, request, dry_run=True)
            key = fingerprint(new)
            found = self.store.holder(key)
            if found is not None and found.state not in RERUN_STATES:
                raise duplicate(found, key, RERUN_STATES)  # before a log_dir is made
            if request.log_dir is not None:
                new = self.jobs.validate(user, request)
            if new.executor == EXTERNAL:
                new.phase, new.reason = Phase.PENDING, None
            token = secrets.token_hex(16)
            job, entry, rerun_of = self.store.create(
                new,
                token_hash=hash_secret(token),
                actor=user.name,
                event_uuid=event_uuid(new.id, "create"),
                data=payload,
                fingerprint=key,
                rerun=RERUN_STATES,
            )
        if job.phase is Phase.QUEUED:
            self.jobs.on_queued()
        # as created: the engine may have started it meanwhile
        status = PipelineRecord(
            job.id, job.owner, job.type, new.phase, job.executor, None, entry.name, fingerprint=key
        )
        return Created(job, status, token, entry, rerun_of)

    # -- reading ----------------------------------------------------------------------------

    def status(self, user: User, job_id: str) -> PipelineRecord:
        """The PipelineJobs status of a job the user may see (404 when it is not one)."""
        job = self.jobs.get(user, job_id)
        found = self.store.details(job.id)
        if found is None:
            raise NotFound(f"job {job.id} is not a PipelineJob", field="id")
        return found

    def summary(self, job_id: str) -> PipelineRecord | None:
        """The status of a job already found for its caller, or None if it is no PipelineJob."""
        return self.store.details(job_id)

    def history(
        self, user: User, job_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[HistoryEntry]:
        found = self.status(user, job_id)
        return self.store.history(found.job_id, after=after, limit=limit)

    def delete(self, user: User, job_id: str) -> None:
        """The reference's delete action: an administrator's only."""
        if not user.admin:
            raise Forbidden("deleting a PipelineJob needs an administrator", field="Authorization")
        self.status(user, job_id)
        self.jobs.delete(user, job_id)

    # -- events -----------------------------------------------------------------------------

    def post(
        self,
        caller: Caller,
        job_id: object,
        name: object,
        data: Any = None,
        *,
        event_id: str | None = None,
    ) -> Applied:
        """Apply the named event to the job, for ``caller``: 401 without credentials, 403 with
        a token that is not the job's (or an event the caller may not send), 404 for a job that
        is no PipelineJob, 409 naming the state and event when the table refuses it, 422 for a
        bad value. ``event_id`` names the delivery: the same id is recorded once. The event is
        committed with others posted at the same moment (``storage.group``)."""
        write = self._event(caller, job_id, name, data, event_id)
        return self._posted(self.store.group.run(write))

    async def post_async(
        self,
        caller: Caller,
        job_id: object,
        name: object,
        data: Any = None,
        *,
        event_id: str | None = None,
    ) -> Applied:
        """``post`` for a request on the event loop: waits for the commit without a thread."""
        write = self._event(caller, job_id, name, data, event_id)
        return self._posted(await self.store.group.run_async(write))

    def _posted(self, applied: Applied) -> Applied:
        if not applied.duplicate and applied.status.phase is Phase.COMPLETED:
            self.wake()  # an external job finished: index it now
        return applied

    def _event(
        self, caller: Caller, job_id: object, name: object, data: Any, event_id: str | None
    ) -> Write[Applied]:
        """The checked request as a write; what needs the database is checked in it."""
        if not isinstance(job_id, str) or not job_id:
            raise ValidationError("the job's uuid is required", field="uuid")
        canonical = parse_job_id(job_id)
        if canonical is None:
            raise ValidationError(f"'{job_id}' is not a UUID", field="uuid")
        if name is None or name == "":
            raise ValidationError("the event's name is required", field="name")
        event = parse_event(name)
        if event is None:
            names = ", ".join(e.value for e in PipelineEvent)
            raise ValidationError(f"unknown event '{name}' (known: {names})", field="name")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValidationError("must be a JSON object", field="data")
        check_value(data, "data")
        if event_id is not None and not 0 < len(event_id) <= MAX_EVENT_ID:
            raise ValidationError(f"1 to {MAX_EVENT_ID} characters", field="event_id")
        user = caller.user if caller.user is not None and not caller.user.reader else None
        if user is None and not caller.token and not caller.nonce:
            raise Unauthorized(
                "a bearer token, the job's token or a nonce is required", field="token"
            )

        nonces: list[Nonce] = []  # the caller's nonce, once checked

        def authorised(status: PipelineStatus, token_hash: str | None) -> str:
            """Who the caller is for this job's events (checked in the event's transaction)."""
            if user is not None and (user.admin or user.name == status.owner):
                authorise(event, admin=user.admin)
                return user.name
            if caller.token:
                if token_hash is None or not hmac.compare_digest(
                    token_hash, hash_secret(caller.token)
                ):
                    raise Forbidden("the token is not this job's", field="token")
                authorise(event, admin=False)
                return UPDATE_TOKEN_ACTOR
            if nonces:
                nonce = nonces[0]
                if nonce.job_id != status.job_id:
                    raise Forbidden("the nonce is not for this job", field="x-nonce")
                authorise(event, admin=False)
                if not nonce.allows(event):
                    raise Forbidden(
                        f"the nonce does not allow event '{event.value}'", field="x-nonce"
                    )
                return f"nonce {nonce.id}"
            raise NotFound(f"no PipelineJob {status.job_id}", field="uuid")

        key = event_uuid(canonical, event_id) if event_id else str(uuid.uuid4())
        write = self.store.apply_write(
            canonical,
            event,
            actor="",
            event_uuid=key,
            data=data,
            authorise=authorised,
            named=event_id is not None,
        )
        if not caller.nonce:
            return write

        def checked(run: Callable[[], Applied]) -> Applied:
            """A nonce is checked first (401), before the job is even looked up."""
            nonces[:] = [self._nonce(caller.nonce or "")]
            return run()

        return Write(
            work=lambda conn: checked(lambda: write.work(conn)),
            alone=lambda: checked(write.alone),
        )

    # -- nonces ------------------------------------------------------------------------------

    def _nonce(self, secret: str) -> Nonce:
        found = self.store.nonce(hash_secret(secret))
        if found is None or not found.active(utcnow()):
            raise Unauthorized("invalid, expired or revoked nonce", field="x-nonce")
        return found

    def _managed(self, user: User, job_id: str) -> PipelineRecord:
        """A PipelineJob whose nonces and token ``user`` may manage (its owner, or an
        administrator): 404 for a job the user cannot see, as everywhere, 403 for one the user
        sees but does not manage (an anonymous reader)."""
        status = self.status(user, job_id)
        if user.reader or user.job is not None or not (user.admin or user.name == status.owner):
            raise Forbidden("only the job's owner or an administrator", field="id")
        return status

    # -- the update token ----------------------------------------------------------------------

    def rotate_token(self, user: User, job_id: str) -> tuple[PipelineRecord, str]:
        """Issue the job a new update token (random, 128 bits, stored hashed, shown only now):
        the old one is refused (403) from this commit on. Its owner's or an administrator's."""
        status = self._managed(user, job_id)
        token = secrets.token_hex(16)
        if not self.store.set_token(status.job_id, hash_secret(token)):
            raise NotFound(f"job {status.job_id} is not a PipelineJob", field="id")
        log.info("PipelineJob %s: update token rotated by %s", status.job_id, user.name)
        return status, token

    def revoke_token(self, user: User, job_id: str) -> PipelineRecord:
        """Revoke the job's update token: from now on its events need a bearer token of its
        owner or an administrator (or a nonce, until it expires or is revoked)."""
        status = self._managed(user, job_id)
        if not self.store.set_token(status.job_id, None):
            raise NotFound(f"job {status.job_id} is not a PipelineJob", field="id")
        log.info("PipelineJob %s: update token revoked by %s", status.job_id, user.name)
        return status

    def issue_nonce(
        self,
        user: User,
        job_id: str,
        *,
        events: list[str] | None = None,
        lifetime: int | None = None,
    ) -> tuple[Nonce, str]:
        """A new nonce for the job's ``events`` (none: every event a token may send), valid for
        ``lifetime`` seconds: the record, and the secret (shown only now)."""
        status = self._managed(user, job_id)
        allowed: list[str] = []
        for index, name in enumerate(events or []):
            event = parse_event(name)
            if event is None or event in RESERVED_EVENTS or event in ADMIN_EVENTS:
                raise ValidationError(
                    f"'{name}' is not an event a nonce may allow", field=f"events[{index}]"
                )
            allowed.append(event.value)
        seconds = NONCE_LIFETIME if lifetime is None else lifetime
        if not 1 <= seconds <= MAX_NONCE_LIFETIME:
            raise ValidationError(f"1 to {MAX_NONCE_LIFETIME} seconds", field="lifetime")
        secret = f"JM_{secrets.token_urlsafe(24)}"
        nonce = self.store.add_nonce(
            status.job_id,
            hash_secret(secret),
            events=tuple(sorted(set(allowed))),
            created_by=user.name,
            expires_at=utcnow() + timedelta(seconds=seconds),
        )
        return nonce, secret

    def nonces(self, user: User, job_id: str) -> list[Nonce]:
        return self.store.nonces(self._managed(user, job_id).job_id)

    def revoke_nonce(self, user: User, job_id: str, nonce_id: int) -> Nonce:
        status = self._managed(user, job_id)
        found = self.store.revoke_nonce(status.job_id, nonce_id)
        if found is None:
            raise NotFound(f"job {status.job_id} has no nonce {nonce_id}", field="nonce_id")
        return found

    # -- the watcher ------------------------------------------------------------------------

    def wake(self) -> None:
        if self.watcher is not None:
            self.watcher.wake()

    def handle(self, change: PhaseChange) -> None:
        """What one phase change means for PipelineJobs (the watcher calls it; idempotent)."""
        if change.parent is not None:
            self._indexer_ended(change)
            return
        name = PHASE_EVENTS.get(change.to_phase)
        if name is not None and change.executor != EXTERNAL:
            self.store.record(
                change.job_id,
                name.value,
                actor=ACTOR,
                event_uuid=event_uuid(change.job_id, f"phase/{change.seq}"),
                data={"phase": change.to_phase.value, "automatic": True},
            )
        if change.to_phase is Phase.COMPLETED:
            self._index(change.job_id, change.type)

    def _index(self, job_id: str, job_type: str) -> Job | None:
        jobtype = self.jobs.jobtypes.get(job_type)
        if jobtype is None or jobtype.indexer is None:
            return None
        status = self.store.status(job_id)
        if status is None:
            return None
        spec = jobtype.indexer
        request = JobRequest(
            type=spec.type,
            parameters={"job": job_id, "filters": json.dumps(spec.filters), "level": spec.level},
        )
        try:
            new = self.jobs.validate(User(status.owner), request)
            indexer = self.store.start_index(
                job_id,
                new,
                actor=ACTOR,
                event_uuid=event_uuid(job_id, "index"),
                data={"filters": list(spec.filters), "level": spec.level},
            )
        except (Conflict, ValidationError, NotFound) as exc:
            log.warning("PipelineJob %s not indexed: %s", job_id, exc)
            return None
        if indexer is not None:
            log.info("PipelineJob %s: indexer job %s", job_id, indexer.id)
            self.jobs.on_queued()
        return indexer

    def _indexer_ended(self, change: PhaseChange) -> None:
        assert change.parent is not None
        completed = change.to_phase is Phase.COMPLETED
        event = PipelineEvent.INDEXED if completed else PipelineEvent.FAIL
        try:
            self.store.apply(
                change.parent,
                event,
                actor=ACTOR,
                event_uuid=event_uuid(change.job_id, "indexer-ended"),
                data={"indexer_job": change.job_id, "phase": change.to_phase.value},
            )
        except (Conflict, NotFound) as exc:  # moved on meanwhile (an operator's event)
            log.warning("PipelineJob %s: indexer %s ended: %s", change.parent, change.job_id, exc)


class PipelineWatcher(Worker):
    """One thread following the events table for ``PipelineService.handle``."""

    thread_name = "jobmill-pipelinejobs"

    def __init__(self, service: PipelineService, *, interval: float = 1.0) -> None:
        super().__init__()
        self.service = service
        self.store = service.store
        self.interval = interval
        self._wake = threading.Event()
        self._cursor: int | None = None
        self._done: set[int] = set()
        service.watcher = self

    def wake(self) -> None:
        """Run a pass now (any thread): jobs ended, or an external job finished."""
        self._wake.set()

    def _interrupt(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        failures = FailureLog(log, "PipelineJobs pass")
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - logged; the next pass retries
                self._stop.wait(failures.failed(exc))
            else:
                failures.succeeded()
            self._wake.wait(self.interval)

    def tick(self) -> int:
        """One pass over the events since the cursor; returns how many changes it handled.
        The last ``LOOKBACK`` sequence numbers are read again (on PostgreSQL a transaction
        can commit after a later one); what was handled then is recorded once anyway."""
        if self._cursor is None:
            self._cursor = self.store.cursor()
        handled = 0
        low = max(0, self._cursor - LOOKBACK)
        while True:
            end = self.store.last_event()
            changes = self.store.phase_changes(low, limit=BATCH)
            for change in changes:
                if change.seq in self._done:
                    continue
                with contextlib.suppress(NotFound):
                    self.service.handle(change)
                self._done.add(change.seq)
                handled += 1
            full = len(changes) == BATCH
            cursor = max(self._cursor, changes[-1].seq if full else end)
            if cursor > self._cursor:
                self.store.advance(cursor)
                self._cursor = cursor
                floor = cursor - LOOKBACK
                self._done = {seq for seq in self._done if seq > floor}
            if not full:
                return handled
            low = changes[-1].seq
