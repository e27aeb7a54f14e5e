"""The job and event domain objects, independent of storage and protocols."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jobmill.domain.conditions import DataCondition
from jobmill.domain.lifecycle import TERMINAL, Phase


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    """UTC ISO 8601 with a ``Z`` and millisecond precision (DESIGN rule 8)."""
    if value is None:
        return None
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def new_id() -> str:
    return str(uuid.uuid4())


def parse_job_id(text: str) -> str | None:
    """Accept a UUID with or without dashes (OCPS uses 32 hex digits); None if it is not one."""
    try:
        return str(uuid.UUID(text.strip()))
    except (ValueError, AttributeError):
        return None


@dataclass
class Job:
    """One instance of a job type."""

    id: str
    type: str
    owner: str
    phase: Phase
    parameters: dict[str, Any]
    created_at: datetime
    run_id: str | None = None
    reason: str | None = None
    extra_parameters: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    executor: str = "local"
    native_id: str | None = None
    node: str | None = None
    exit_code: int | None = None
    error: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    updated_at: datetime | None = None
    destruction_at: datetime | None = None
    execution_duration: int = 0
    parent_id: str | None = None
    log_dir: str | None = None
    event_count: int = 0
    seq: int = 0
    tags: tuple[str, ...] = ()
    """The job's tags, sorted (filled where jobs are read for display)."""
    stage: str | None = None
    """The step it runs: None (its main step), "subjobs" (it created sub-jobs) or "epilog"."""
    after: tuple[str, ...] | None = None
    """The jobs it depends on (filled where jobs are read for display; None: not read)."""
    dependents: tuple[str, ...] | None = None
    """The jobs that depend on it (filled like ``after``)."""
    children: tuple[str, ...] | None = None
    """Its sub-jobs (filled like ``after``)."""

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL


@dataclass
class JobRequest:
    """What a face asks for when it creates a job (before validation)."""

    type: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    executor: str | None = None
    execution_duration: int | None = None
    log_dir: str | None = None
    start: bool = True
    allow_unknown: bool = False
    wait_for: DataCondition | None = None
    """Data the job waits for before it may run (QUEUED, reason "waiting for data")."""
    after: Sequence[str] = ()
    """Jobs that must complete before this one runs (QUEUED, "waiting for upstream jobs")."""
    on_parent_failure: str | None = None
    """"fail" or "wait" when one of ``after`` ends in ERROR or ABORTED (None: the job type's)."""
    tags: Sequence[str] = ()
    """Tags to create the job with (``jobmill submit --tag``)."""


@dataclass
class NewJob:
    """A validated job about to be stored."""

    type: str
    owner: str
    parameters: dict[str, Any]
    executor: str
    execution_duration: int
    destruction_at: datetime
    phase: Phase = Phase.QUEUED
    reason: str | None = None
    run_id: str | None = None
    extra_parameters: dict[str, Any] = field(default_factory=dict)
    parent_id: str | None = None
    log_dir: str | None = None
    id: str = field(default_factory=new_id)
    after: tuple[str, ...] = ()
    on_parent_failure: str | None = None
    tags: tuple[str, ...] = ()


@dataclass
class Event:
    """One append-only entry of a job's history."""

    seq: int
    job_id: str
    n: int
    at: datetime
    name: str
    from_phase: Phase | None
    to_phase: Phase | None
    actor: str
    data: dict[str, Any]


@dataclass
class JobFilter:
    """What ``JobStore.list`` selects on; every field is optional and they combine with AND."""

    phases: Sequence[Phase] = ()
    type: str | None = None
    owner: str | None = None
    run_id: str | None = None
    created_after: datetime | None = None
    executor: str | None = None
    id_prefix: str | None = None
    """The start of the job's id (lowercase hex and dashes): short ids in the CLI."""
    tag: str | None = None
    """Only jobs carrying this tag."""
    seq_min: int | None = None
    """Only jobs whose sequence number is at least this (``jobmill ls id>=10``)."""
    seq_max: int | None = None
    """Only jobs whose sequence number is at most this."""


@dataclass(frozen=True)
class JobRef:
    """The columns a job list shows (a UWS ``jobref``): a fraction of the cost of a ``Job``,
    whose 25 columns and JSON documents make up half the time of a 100-job list."""

    id: str
    phase: Phase
    run_id: str | None
    owner: str
    created_at: datetime
    seq: int
