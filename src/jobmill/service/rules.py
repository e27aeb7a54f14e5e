"""RuleEngine: rules that create jobs without a person (see ``domain.rules``, docs/triggers.md).

The rule set is the rules files' rules (read at start, read-only through the API except their
switch) plus the rules created through the API (rows of ``rules``), read again at every pass so
that every jobmill process sharing the database sees the same set.

One thread makes a pass every ``interval`` seconds, or at once when a file arrives or (with a
job rule enabled) when this process's engine records jobs ending:

* file rules listen on the one data watcher (``DataWatcher.listen``): the same completeness
  rules as waiting jobs, inotify or scanning, and a first look at what is already there, so
  files that arrived while jobmill was down fire at start-up;
* job rules follow the events table from a cursor persisted in ``rule_cursors`` (an index
  range on ``events.seq``; the last ``LOOKBACK`` sequence numbers are read again, because on
  PostgreSQL a transaction can commit after a later one);
* schedules fire the latest slot at or before now, once; after a long stop only the latest
  missed slot fires, not every one.

Every firing goes through ``RuleStore.fire``: the job and its firing row in one transaction,
unique per (rule, key), so nothing fires twice, whatever the number of processes or restarts.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pydantic

from jobmill.domain.conditions import DataCondition
from jobmill.domain.errors import Conflict, Forbidden, NotFound, ValidationError
from jobmill.domain.jobs import Job, utcnow
from jobmill.domain.rule_files import spec_error
from jobmill.domain.rules import (
    MAX_KEY,
    FilePattern,
    Firing,
    RuleSpec,
    Schedule,
    check,
    file_context,
    job_context,
    render,
    render_parameters,
    schedule_context,
    slot_key,
)
from jobmill.domain.values import INT32_MAX, check_int, check_value, safe_text, text_problem
from jobmill.service.datawatch import DataWatcher, FileListener
from jobmill.service.failures import FailureLog
from jobmill.service.jobs import JobRequest, JobService, User
from jobmill.service.results import list_results
from jobmill.service.signals import Signal
from jobmill.service.worker import Worker
from jobmill.storage.rules import Ended, Pending, RuleStore

log = logging.getLogger(__name__)
LOOKBACK = 500
"""Event sequence numbers read again at every pass (commits out of order)."""
BATCH = 1000


@dataclass
class Rule:
    """A rule in force: its spec, where it comes from, and its switch."""

    spec: RuleSpec
    source: str  # "file" (a rules file) or "api"
    origin: str  # "<file>:<line>" or "api"
    enabled: bool
    created_by: str | None = None
    created_at: datetime | None = None
    """API rules fire for what happens after this; rules-file rules have none."""
    pattern: FilePattern | None = field(default=None, repr=False)
    root: str | None = None
    schedule: Schedule | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind


class RuleEngine(Worker):
    """The rules: reading and changing them (the API), and firing them (a thread)."""

    thread_name = "jobmill-rules"

    def __init__(
        self,
        store: RuleStore,
        jobs: JobService,
        file_rules: Mapping[str, tuple[RuleSpec, str]],
        *,
        watcher: DataWatcher | None,
        data_root: Path,
        default_owner: str,
        clock: Callable[[], datetime] = utcnow,
        interval: float = 1.0,
        jobs_ended: Signal | None = None,
    ) -> None:
        """``jobs_ended`` announces jobs ended in this process (the engine's): a pass then
        runs at once when a job rule listens (``notify_ended``)."""
        super().__init__()
        self.store = store
        self.jobs = jobs
        self.file_rules = dict(file_rules)
        self.watcher = watcher
        self.data_root = str(data_root)
        self.default_owner = default_owner
        self.clock = clock
        self.interval = interval
        self.started_at = clock()
        self.fired = 0
        self._lock = threading.Lock()
        self._listening: dict[str, Rule] = {}
        self._seen: dict[str, set[str]] = {}
        self._arrivals: deque[tuple[str, str]] = deque()
        self._cursor: int | None = None
        self._done_events: set[tuple[int, str]] = set()
        self._last_slot: dict[str, str] = {}
        self._shadowed: set[str] = set()
        self._wake = threading.Event()
        self._job_rules = False  # whether the last pass saw an enabled job rule
        if jobs_ended is not None:
            jobs_ended.connect(self.notify_ended)

    # -- control ----------------------------------------------------------------------------

    def _interrupt(self) -> None:
        self._wake.set()

    def _closing(self) -> None:
        if self.watcher is not None:
            for name in list(self._listening):
                self.watcher.unlisten(_listener_key(name))
        self._listening.clear()

    def replace_file_rules(self, file_rules: Mapping[str, tuple[RuleSpec, str]]) -> None:
        """Serve these rules-file rules from now on (a reload): the next pass, run at once,
        starts and stops the file listeners that changed."""
        with self._lock:
            self.file_rules = dict(file_rules)
            self._shadowed.clear()
        self._wake.set()

    def notify_ended(self) -> None:
        """Jobs ended in this process: run a pass now if any job rule listens (any thread).

        Jobs ended by another process are read from the events table at the next pass.
        """
        if self._job_rules:
            self._wake.set()

    def _run(self) -> None:
        failures = FailureLog(log, "rules pass")  # a full disk: logged once, not every pass
        while not self._stop.is_set():
            self._wake.clear()  # before the pass: a file arriving during it wakes the next
            try:
                self.tick()
            except Exception as exc:  # logged; the next pass retries
                self._stop.wait(failures.failed(exc))
            else:
                failures.succeeded()
            if not self._arrivals:
                self._wake.wait(self.interval)

    def tick(self, now: datetime | None = None) -> int:
        """One pass: align the file listeners with the rules, fire what is due. Returns the
        number of jobs created (tests call it directly with their own ``now``)."""
        now = now or self.clock()
        rules = self.rules()
        before = self.fired
        with self._lock:
            self._sync_listeners(rules)
        self._fire_files(rules)
        self._fire_jobs(rules)
        self._fire_schedules(rules, now)
        return self.fired - before

    # -- the rule set -----------------------------------------------------------------------

    def rules(self) -> list[Rule]:
        """Every rule, rules-file rules first, then API rules, each by name."""
        stored = {row.name: row for row in self.store.rules()}
        found: dict[str, Rule] = {}
        for name, (spec, origin) in sorted(self.file_rules.items()):
            row = stored.get(name)
            enabled = row.enabled if row is not None and row.source == "file" else spec.enabled
            found[name] = self._prepare(Rule(spec, "file", origin, enabled))
        for row in stored.values():
            if row.source != "api" or row.definition is None:
                continue
            if row.name in found:
                if row.name not in self._shadowed:
                    self._shadowed.add(row.name)
                    log.warning("rule %s: the rules file's rule hides the API one", row.name)
                continue
            try:
                spec = RuleSpec.model_validate(row.definition)
                check(spec, self.jobs.jobtypes)
            except (pydantic.ValidationError, ValidationError) as exc:
                if row.name not in self._shadowed:
                    self._shadowed.add(row.name)
                    log.warning("rule %s no longer fits the job types, ignored: %s", row.name, exc)
                continue
            found[row.name] = self._prepare(
                Rule(spec, "api", "api", row.enabled, row.created_by, row.created_at)
            )
        return list(found.values())

    def _prepare(self, rule: Rule) -> Rule:
        spec = rule.spec
        if spec.file is not None:
            rule.pattern = FilePattern.compile(spec.file)
            root = spec.root or "."
            rule.root = os.path.normpath(os.path.join(self.data_root, os.path.expanduser(root)))
        elif spec.schedule is not None:
            rule.schedule = Schedule(spec.schedule)
        return rule

    def get(self, name: str) -> Rule:
        for rule in self.rules():
            if rule.name == name:
                return rule
        raise NotFound(f"no rule '{name}'", field="name")

    def create(self, user: User, body: Any) -> Rule:
        """Store a rule posted to the API (admin only); 422 naming the field when it is bad."""
        _require_admin(user)
        if not isinstance(body, Mapping):
            raise ValidationError("a rule must be a JSON object", field="body")
        check_value(body, "")  # before the rule's own checks quote any of it
        try:
            spec = RuleSpec.model_validate(body)
        except pydantic.ValidationError as exc:
            loc, message = spec_error(exc)
            where = ".".join(str(p) for p in loc) or "body"
            message = message if message.startswith(f"{where}:") else f"{where}: {message}"
            raise ValidationError(message, field=where) from None
        check(spec, self.jobs.jobtypes)
        if spec.name in self.file_rules:
            raise Conflict(
                f"rule '{spec.name}' is declared in {self.file_rules[spec.name][1]}", field="name"
            )
        self.store.add(spec.name, spec.definition(), enabled=spec.enabled, actor=user.name)
        self._wake.set()
        return self.get(spec.name)

    def delete(self, user: User, name: str) -> None:
        _require_admin(user)
        rule = self.get(name)
        # Removes the stored API rule of that name, also one a rules-file rule hides.
        if not self.store.remove(name) and rule.source == "file":
            raise Conflict(
                f"rule '{name}' is declared in {rule.origin}: remove it there (or disable it)",
                field="name",
            )
        self._wake.set()

    def set_enabled(self, user: User, name: str, enabled: bool) -> Rule:
        _require_admin(user)
        rule = self.get(name)
        self.store.switch(name, source=rule.source, enabled=enabled, actor=user.name)
        self._wake.set()
        return self.get(name)

    def firings(self, name: str, *, limit: int = 100, before: int | None = None) -> list[Firing]:
        if before is not None:
            check_int(before, "before", low=0, high=INT32_MAX)
        self.get(name)
        return self.store.firings(name, limit=limit, before=before)

    # -- firing, common ---------------------------------------------------------------------

    def _fire(
        self, rule: Rule, key: str, context: Mapping[str, Any], detail: Mapping[str, Any]
    ) -> Job | None:
        """Render, validate and create the rule's job for ``key`` (once)."""
        created = self._write([self._pending(rule, key, context, detail)])
        return created[0] if created else None

    def _pending(
        self, rule: Rule, key: str, context: Mapping[str, Any], detail: Mapping[str, Any]
    ) -> Pending:
        """The firing of ``rule`` for ``key``: its checked job, or the error that stops it (a
        value missing, a value the job type refuses), recorded as a firing without a job."""
        spec = rule.spec
        owner = spec.owner or rule.created_by or self.default_owner
        new = None
        error = None
        try:
            parameters = render_parameters(spec, context)
            run_id = render(spec.run_id, context, field="run_id") if spec.run_id else None
            request = JobRequest(
                type=spec.create,
                parameters=parameters,
                run_id=None if run_id is None else str(run_id),
            )
            new = self.jobs.validate(User(owner), request)
        except ValidationError as exc:
            error = exc.message
            log.warning("rule %s for %s: %s", rule.name, key, error)
        return Pending(rule.name, key, rule.kind, new, error, dict(detail))

    def _write(self, pending: list[Pending]) -> list[Job]:
        created = self.store.fire_many(pending)
        if created:
            self.fired += len(created)
            log.info("rules created %d job(s)", len(created))
            try:
                self.jobs.on_queued()
            except Exception:  # pragma: no cover - the engine stopped; it picks the jobs up later
                log.debug("engine not told of %d new jobs", len(created))
        return created

    # -- file rules -------------------------------------------------------------------------

    def _sync_listeners(self, rules: list[Rule]) -> None:
        if self.watcher is None:
            return
        wanted = {r.name: r for r in rules if r.enabled and r.kind == "file"}
        for name, current in list(self._listening.items()):
            rule = wanted.get(name)
            if rule is None or rule.spec != current.spec or rule.root != current.root:
                self.watcher.unlisten(_listener_key(name))
                del self._listening[name]
        for name, rule in wanted.items():
            if name in self._listening:
                continue
            assert rule.pattern is not None and rule.root is not None
            self._seen[name] = self.store.keys(name)
            condition = DataCondition(
                paths=(f"{rule.root.rstrip('/')}/{rule.pattern.glob}",),
                mode="any",
                marker=bool(rule.spec.marker),
                stable_seconds=rule.spec.stable_seconds,
            )
            listener = FileListener(
                key=_listener_key(name),
                condition=condition,
                wanted=partial(self._wanted, rule),
                arrived=partial(self._arrived, rule),
            )
            self._listening[name] = rule
            self.watcher.listen(listener)

    def _relative(self, rule: Rule, path: str) -> str | None:
        assert rule.root is not None and rule.pattern is not None
        prefix = rule.root.rstrip("/") + "/"
        if not path.startswith(prefix):
            return None
        relative = path[len(prefix) :]
        return relative if rule.pattern.match(relative) is not None else None

    def _wanted(self, rule: Rule, path: str) -> bool:
        """Watcher thread: does this file still matter to the rule?"""
        relative = self._relative(rule, path)
        seen = self._seen.get(rule.name)
        return relative is not None and seen is not None and relative not in seen

    def _arrived(self, rule: Rule, path: str) -> None:
        """Watcher thread: a complete file for the rule; the rules thread fires it."""
        relative = self._relative(rule, path)
        seen = self._seen.get(rule.name)
        if relative is None or seen is None or relative in seen:
            return
        seen.add(relative)
        self._arrivals.append((rule.name, relative))
        self._wake.set()

    def _fire_files(self, rules: list[Rule]) -> None:
        """Fire for the files that arrived, up to ``BATCH`` per transaction."""
        by_name = {r.name: r for r in rules if r.enabled and r.kind == "file"}
        while self._arrivals:
            batch: list[tuple[str, str]] = []
            while self._arrivals and len(batch) < BATCH:
                batch.append(self._arrivals.popleft())
            pending = []
            for name, relative in batch:
                rule = by_name.get(name)
                if rule is None:  # disabled meanwhile: enabling it looks at the files again
                    self._seen.get(name, set()).discard(relative)
                    continue
                if len(relative) > MAX_KEY:
                    log.warning("rule %s: path longer than %d characters, ignored", name, MAX_KEY)
                    continue
                if text_problem(relative) is not None:  # a name that is not UTF-8: unstorable
                    log.warning("rule %s: %s: %s, ignored", name, safe_text(relative),
                                text_problem(relative))  # fmt: skip
                    continue
                assert rule.pattern is not None and rule.root is not None
                context = file_context(rule.pattern, rule.root, relative)
                if context is not None:
                    pending.append(
                        self._pending(rule, relative, context, {"path": context["path"]})
                    )
            try:
                self._write(pending)
            except Exception:
                self._arrivals.extendleft(reversed(batch))  # the database: retried next pass
                raise

    # -- job rules --------------------------------------------------------------------------

    def _fire_jobs(self, rules: list[Rule]) -> None:
        job_rules = [r for r in rules if r.enabled and r.kind == "job"]
        self._job_rules = bool(job_rules)
        if self._cursor is None:
            self._cursor = self.store.cursor()
        types = sorted({r.spec.job for r in job_rules if r.spec.job})
        low = max(0, self._cursor - LOOKBACK)
        while True:
            end = self.store.last_event()
            ended = self.store.ended_since(low, types, limit=BATCH)
            for event in ended:
                self._handle_ended(event, job_rules)
            full = len(ended) == BATCH
            cursor = max(self._cursor, ended[-1].seq if full else end)
            if cursor > self._cursor:
                self.store.advance(cursor)
                self._cursor = cursor
                floor = cursor - LOOKBACK
                self._done_events = {d for d in self._done_events if d[0] > floor}
            if not full:
                return
            low = ended[-1].seq

    def _handle_ended(self, event: Ended, job_rules: list[Rule]) -> None:
        for rule in job_rules:
            if rule.spec.job != event.job_type or rule.spec.phase != event.phase:
                continue
            mark = (event.seq, rule.name)
            if mark in self._done_events:
                continue
            if rule.created_at is not None and event.at < rule.created_at:
                self._done_events.add(mark)
                continue
            if not self.store.fired(rule.name, event.job_id):
                upstream = self.jobs.store.get(event.job_id)
                if upstream is not None:
                    self._fire(
                        rule,
                        event.job_id,
                        self._job_context(upstream, event.phase),
                        {"upstream": event.job_id},
                    )
            self._done_events.add(mark)

    def _job_context(self, job: Job, phase: str) -> dict[str, Any]:
        jobtype = self.jobs.jobtypes.get(job.type)
        results: dict[str, str] = {}
        for result in list_results(self.jobs.files, jobtype, job):
            name = result.id.split("/", 1)[0]
            results.setdefault(name, str(result.path))
        return job_context(
            job_id=job.id,
            job_type=job.type,
            owner=job.owner,
            run_id=job.run_id,
            phase=phase,
            parameters={**job.extra_parameters, **job.parameters},
            results=results,
            report=job.report,
        )

    # -- schedules --------------------------------------------------------------------------

    def _fire_schedules(self, rules: list[Rule], now: datetime) -> None:
        for rule in rules:
            if not rule.enabled or rule.schedule is None:
                continue
            slot = rule.schedule.latest(now)
            key = slot_key(slot)
            last = self._last_slot.get(rule.name)
            if last is None:
                last = self.store.last_key(rule.name) or ""
                self._last_slot[rule.name] = last
            if key <= last:
                continue
            since = rule.created_at or self.started_at
            if not last and slot < since.replace(second=0, microsecond=0):
                continue  # a new rule fires from its first slot on, not for the past
            self._fire(rule, key, schedule_context(slot), {"slot": key})
            self._last_slot[rule.name] = key

    def next_slot(self, rule: Rule) -> datetime | None:
        return rule.schedule.next(self.clock()) if rule.schedule is not None else None


def _listener_key(name: str) -> str:
    return f"rule:{name}"


def _require_admin(user: User) -> None:
    if not user.admin:
        raise Forbidden("only an administrator may change rules", field="user")
