"""RuleStore: stored rules, their firings, and how far job rules have read the events.

Exactly once: ``fire`` writes a job, its ``created`` event (actor ``rule:<name>``, data naming
the rule and the key) and the firing row in one transaction, and ``rule_firings`` is unique on
(rule, key). A file seen twice, a replayed event, two jobmill processes, or a restart between
the firing and anything after it find the row, or lose the insert to the unique constraint and
roll the whole transaction back: never a second job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from jobmill.domain.errors import Conflict
from jobmill.domain.jobs import Job, NewJob, utcnow
from jobmill.domain.lifecycle import TERMINAL
from jobmill.domain.rules import Firing
from jobmill.storage.cursors import EventCursor
from jobmill.storage.db import aware
from jobmill.storage.jobs import JobStore
from jobmill.storage.tables import events, jobs, rule_firings, rules
from jobmill.storage.writes import created_event_row, insert_jobs, job_row

JOB_EVENTS = "job-events"
"""The ``rule_cursors`` row of the job rules."""
TERMINAL_PHASES = sorted(p.value for p in TERMINAL)
CHUNK = 500


@dataclass
class Pending:
    """A firing about to be written: its job (None when it failed, with ``error``)."""

    rule: str
    key: str
    kind: str
    new: NewJob | None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class StoredRule:
    """A row of ``rules``: an API rule (with ``definition``) or a rules-file rule's switch."""

    name: str
    source: str
    definition: dict[str, Any] | None
    enabled: bool
    created_by: str
    created_at: datetime
    updated_at: datetime


@dataclass
class Ended:
    """An event that ended a job, with the job's type."""

    seq: int
    job_id: str
    job_type: str
    phase: str
    at: datetime


def _stored(row: Row[Any]) -> StoredRule:
    m = row._mapping
    return StoredRule(
        name=m["name"],
        source=m["source"],
        definition=m["definition"],
        enabled=bool(m["enabled"]),
        created_by=m["created_by"],
        created_at=aware(m["created_at"]) or utcnow(),
        updated_at=aware(m["updated_at"]) or utcnow(),
    )


def _firing(row: Row[Any]) -> Firing:
    m = row._mapping
    return Firing(
        id=m["id"],
        rule=m["rule"],
        key=m["key"],
        kind=m["kind"],
        job_id=m["job_id"],
        error=m["error"],
        fired_at=aware(m["fired_at"]) or utcnow(),
    )


class RuleStore:
    """Rules, firings and the events cursor, beside the jobs the rules create."""

    def __init__(self, jobs_store: JobStore) -> None:
        self.engine: Engine = jobs_store.engine
        self.read_engine: Engine = jobs_store.read_engine
        self._cursor = EventCursor(self.engine, self.read_engine, JOB_EVENTS)

    # -- rules ------------------------------------------------------------------------------

    def rules(self) -> list[StoredRule]:
        with self.read_engine.connect() as conn:
            return [_stored(r) for r in conn.execute(select(rules).order_by(rules.c.name))]

    def get(self, name: str) -> StoredRule | None:
        with self.read_engine.connect() as conn:
            row = conn.execute(select(rules).where(rules.c.name == name)).first()
        return _stored(row) if row else None

    def add(
        self, name: str, definition: Mapping[str, Any], *, enabled: bool, actor: str
    ) -> StoredRule:
        """Store an API rule; a rule of that name already stored is a ``Conflict``."""
        now = utcnow()
        values = {
            "name": name,
            "source": "api",
            "definition": dict(definition),
            "enabled": enabled,
            "created_by": actor,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(rules).values(values))
        except IntegrityError:
            raise Conflict(f"a rule named '{name}' already exists", field="name") from None
        return StoredRule(**values)  # type: ignore[arg-type]

    def switch(self, name: str, *, source: str, enabled: bool, actor: str) -> None:
        """Set a rule's switch; for a rules-file rule the row is created on the first flip."""
        now = utcnow()
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(rules)
                .where(rules.c.name == name, rules.c.source == source)
                .values(enabled=enabled, updated_at=now)
            ).rowcount
            if changed or source == "api":
                return
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(rules).values(
                        name=name,
                        source=source,
                        definition=None,
                        enabled=enabled,
                        created_by=actor,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:  # flipped by someone else at the same moment: set it again
            with self.engine.begin() as conn:
                changed = conn.execute(
                    update(rules)
                    .where(rules.c.name == name, rules.c.source == source)
                    .values(enabled=enabled, updated_at=now)
                ).rowcount
            if not changed:  # the name is taken by a stored API rule the rules file hides
                raise Conflict(
                    f"a stored API rule is also named '{name}' (the rules file's rule hides it):"
                    f" delete it first (DELETE /api/v1/rules/{name})",
                    field="name",
                ) from None

    def remove(self, name: str) -> bool:
        """Delete a stored API rule (its firings stay: the same keys never fire again)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(rules).where(rules.c.name == name, rules.c.source == "api")
            )
        return bool(result.rowcount)

    # -- firings ----------------------------------------------------------------------------

    def fire(
        self,
        rule: str,
        key: str,
        *,
        kind: str,
        new: NewJob | None,
        error: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> Job | None:
        """Record a firing of ``rule`` for ``key`` and create its job, in one transaction.

        Returns the job created, or None when the rule had already fired for the key (or
        ``new`` is None: a firing that failed, recorded with its ``error``)."""
        created = self.fire_many([Pending(rule, key, kind, new, error, dict(detail or {}))])
        return created[0] if created else None

    def fire_many(self, pending: Sequence[Pending]) -> list[Job]:
        """``fire`` for many keys in one transaction (a burst of files): the keys already fired
        are left out, the rest written together. Should another process fire one of them
        at the same moment, each is fired on its own instead. Returns the jobs created."""
        if not pending:
            return []
        try:
            with self.engine.begin() as conn:
                return self._fire_in(conn, pending)
        except IntegrityError:
            if len(pending) == 1:
                if self.fired(pending[0].rule, pending[0].key):
                    return []  # another process fired it at the same moment
                raise
        created: list[Job] = []
        for item in pending:
            created.extend(self.fire_many([item]))
        return created

    def _fire_in(self, conn: Connection, pending: Sequence[Pending]) -> list[Job]:
        now = utcnow()
        done: set[tuple[str, str]] = set()
        for rule in {p.rule for p in pending}:
            keys = [p.key for p in pending if p.rule == rule]
            for start in range(0, len(keys), CHUNK):
                query = select(rule_firings.c.key).where(
                    rule_firings.c.rule == rule, rule_firings.c.key.in_(keys[start : start + CHUNK])
                )
                done.update((rule, key) for key in conn.execute(query).scalars())
        job_rows: list[dict[str, Any]] = []
        event_rows: list[dict[str, Any]] = []
        firing_rows: list[dict[str, Any]] = []
        for item in pending:
            if (item.rule, item.key) in done:
                continue
            done.add((item.rule, item.key))
            new = item.new
            firing_rows.append(
                {
                    "rule": item.rule,
                    "key": item.key,
                    "kind": item.kind,
                    "job_id": new.id if new is not None else None,
                    "error": item.error,
                    "fired_at": now,
                }
            )
            if new is None:
                continue
            job_rows.append(job_row(new, now))
            rule_data = {"name": item.rule, "kind": item.kind, "key": item.key, **item.detail}
            event_rows.append(created_event_row(new, now, f"rule:{item.rule}", {"rule": rule_data}))
        created = insert_jobs(conn, job_rows, event_rows)
        if firing_rows:
            conn.execute(insert(rule_firings), firing_rows)
        return created

    def fired(self, rule: str, key: str) -> bool:
        query = select(rule_firings.c.id).where(
            rule_firings.c.rule == rule, rule_firings.c.key == key
        )
        with self.read_engine.connect() as conn:
            return conn.execute(query).first() is not None

    def keys(self, rule: str) -> set[str]:
        """Every key ``rule`` fired for (a file rule's start-up cache)."""
        query = select(rule_firings.c.key).where(rule_firings.c.rule == rule)
        with self.read_engine.connect() as conn:
            return set(conn.execute(query).scalars())

    def last_key(self, rule: str) -> str | None:
        """The greatest key ``rule`` fired for (a schedule's latest slot)."""
        query = select(func.max(rule_firings.c.key)).where(rule_firings.c.rule == rule)
        with self.read_engine.connect() as conn:
            return conn.execute(query).scalar()

    def firings(self, rule: str, *, limit: int = 100, before: int | None = None) -> list[Firing]:
        """The rule's firings, newest first."""
        query = select(rule_firings).where(rule_firings.c.rule == rule)
        if before is not None:
            query = query.where(rule_firings.c.id < before)
        query = query.order_by(rule_firings.c.id.desc()).limit(max(1, min(limit, 1001)))
        with self.read_engine.connect() as conn:
            return [_firing(row) for row in conn.execute(query)]

    # -- the events cursor ------------------------------------------------------------------

    def cursor(self) -> int:
        """How far job rules have read the events; created at the current end the first time
        (rules do not fire for jobs that ended before jobmill had rules)."""
        return self._cursor.get()

    def advance(self, seq: int) -> None:
        """Move the cursor forward to ``seq`` (never back)."""
        self._cursor.advance(seq)

    def ended_since(self, seq: int, types: Sequence[str], *, limit: int = 1000) -> list[Ended]:
        """Events after ``seq`` that ended a job of one of ``types``, in order (an index range
        on ``events.seq``, not a table scan)."""
        if not types:
            return []
        query = (
            select(events.c.seq, events.c.job_id, events.c.to_phase, events.c.at, jobs.c.type)
            .select_from(events.join(jobs, jobs.c.id == events.c.job_id))
            .where(
                events.c.seq > seq,
                events.c.to_phase.in_(TERMINAL_PHASES),
                events.c.from_phase.is_not(None),
                events.c.from_phase != events.c.to_phase,
                jobs.c.type.in_(list(types)),
            )
            .order_by(events.c.seq)
            .limit(limit)
        )
        with self.read_engine.connect() as conn:
            return [
                Ended(r.seq, r.job_id, r.type, r.to_phase, aware(r.at) or utcnow())
                for r in conn.execute(query)
            ]

    def last_event(self) -> int:
        return self._cursor.last_event()
