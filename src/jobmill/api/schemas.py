"""Request and response shapes of the native JSON API."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobmill.domain.conditions import MAX_PATH_LENGTH, MAX_PATHS, MAX_TIMEOUT, DataCondition
from jobmill.domain.jobs import Event, Job, iso
from jobmill.domain.values import INT32_MAX

if TYPE_CHECKING:
    from jobmill.domain.conditions import WaitingCondition
    from jobmill.service.jobs import Graph


class WaitFor(BaseModel):
    """``wait_for`` of a new job: data that must arrive before it may run (docs/triggers.md)."""

    model_config = ConfigDict(extra="forbid")

    paths: list[Annotated[str, Field(min_length=1, max_length=MAX_PATH_LENGTH)]] = Field(
        min_length=1,
        max_length=MAX_PATHS,
        description="absolute paths or glob patterns (* ? [..] **); relative ones resolve "
        "against the data root; {job_id} and {job_hex} are replaced by the job's id",
    )
    mode: Literal["all", "any"] = Field(default="all", description="all paths, or any one")
    timeout: float | None = Field(
        default=None, gt=0, le=MAX_TIMEOUT, description="seconds; then the job ends ERROR"
    )
    marker: bool = Field(default=False, description="each file counts once <file>.done exists")
    stable_seconds: float | None = Field(
        default=None, ge=0, le=86400, description="size and mtime unchanged this long"
    )

    def condition(self) -> DataCondition:
        return DataCondition(
            paths=tuple(self.paths),
            mode=self.mode,
            timeout=self.timeout,
            marker=self.marker,
            stable_seconds=self.stable_seconds,
        )


class JobCreate(BaseModel):
    """``POST /api/v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=64, description="job type name")
    parameters: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = Field(default=None, max_length=256)
    executor: str | None = Field(default=None, max_length=32)
    execution_duration: int | None = Field(
        default=None, ge=0, le=INT32_MAX, description="seconds; 0 = none"
    )
    log_dir: str | None = Field(default=None, max_length=4096)
    phase: Literal["PENDING", "QUEUED"] = Field(
        default="QUEUED", description="PENDING keeps the job until it is run"
    )
    wait_for: WaitFor | None = Field(
        default=None, description="data to wait for: the job stays QUEUED until it arrives"
    )
    tags: list[Any] = Field(
        default_factory=list, description="tags to create the job with (docs/workflows.md)"
    )
    after: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description="ids of jobs that must complete first: the job waits QUEUED (waiting for "
        "upstream jobs) until they have",
    )
    on_parent_failure: Literal["fail", "wait"] | None = Field(
        default=None,
        description="when a job of 'after' ends in ERROR or ABORTED: fail (end in ERROR) or "
        "wait (until reset or unlinked); default: the job type's, else fail",
    )


class LinkCreate(BaseModel):
    """``POST /api/v1/jobs/{id}/links``."""

    model_config = ConfigDict(extra="forbid")

    after: list[str] = Field(min_length=1, max_length=10_000, description="ids of jobs")


class JobEdit(BaseModel):
    """``PATCH /api/v1/jobs/{id}``: change parameters of a PENDING job (``If-Match``: the
    ``version`` it was read at)."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(description="merged with the current parameters")


class JobClone(BaseModel):
    """``POST /api/v1/jobs/{id}/clone``."""

    model_config = ConfigDict(extra="forbid")

    phase: Literal["PENDING", "QUEUED"] = Field(
        default="PENDING", description="PENDING keeps the copy until it is run"
    )


class JobBatchCreate(BaseModel):
    """``POST /api/v1/jobs/batch``: many jobs, all or nothing."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[JobCreate] = Field(min_length=1)


class JobBatchOut(BaseModel):
    """The answer to ``POST /api/v1/jobs/batch``: the new jobs' ids, in the request's order."""

    count: int
    ids: list[str]


class JobOut(BaseModel):
    """A job as the native API shows it."""

    id: str
    type: str
    owner: str
    run_id: str | None
    phase: str
    reason: str | None
    parameters: dict[str, Any]
    extra_parameters: dict[str, Any]
    executor: str
    native_id: str | None
    exit_code: int | None
    error: str | None
    report: dict[str, Any]
    created: str | None
    started: str | None
    ended: str | None
    destruction: str | None
    execution_duration: int
    parent: str | None
    log_dir: str | None
    seq: int = Field(description="the job's sequence number (``jobmill ls id>10``)")
    version: int = Field(description="changes with every event of the job (the ETag)")
    tags: list[str]
    pipeline: dict[str, Any] | None = Field(
        default=None,
        description="GET /jobs/{id} of a PipelineJob: {uuid, state, last_event, phase, "
        "curation, executor, indexer_job, history_url} (docs/pipelinejobs.md)",
    )
    after: list[str] = Field(default_factory=list, description="the jobs it runs after")
    dependents: list[str] = Field(default_factory=list, description="the jobs that run after it")
    children: list[str] = Field(default_factory=list, description="its sub-jobs")


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class RenderOut(BaseModel):
    """``POST /api/v1/jobs/render``: what a job would be submitted with (nothing is created)."""

    executor: str = Field(description="the executor that would run the job")
    script: str = Field(description="the exact script or submit description")
    job_id: str = Field(description="the id the script was written for; a real job gets a new one")


class DetailsOut(BaseModel):
    """``GET /api/v1/jobs/{id}/details``: the backend's own description of the job."""

    id: str
    phase: str
    executor: str
    native_id: str
    details: str = Field(description="scontrol show job, condor_q -l, bjobs -l, or the process")


class EventOut(BaseModel):
    n: int
    at: str | None
    name: str
    from_phase: str | None
    to_phase: str | None
    actor: str
    data: dict[str, Any]


def job_out(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "type": job.type,
        "owner": job.owner,
        "run_id": job.run_id,
        "phase": job.phase.value,
        "reason": job.reason,
        "parameters": job.parameters,
        "extra_parameters": job.extra_parameters,
        "executor": job.executor,
        "native_id": job.native_id,
        "exit_code": job.exit_code,
        "error": job.error,
        "report": job.report,
        "created": iso(job.created_at),
        "started": iso(job.started_at),
        "ended": iso(job.ended_at),
        "destruction": iso(job.destruction_at),
        "execution_duration": job.execution_duration,
        "parent": job.parent_id,
        "log_dir": job.log_dir,
        "seq": job.seq,
        "version": job.event_count,
        "tags": list(job.tags),
        "after": list(job.after or ()),
        "dependents": list(job.dependents or ()),
        "children": list(job.children or ()),
    }


class GraphNode(BaseModel):
    id: str
    type: str
    phase: str
    reason: str | None
    parent: str | None


class GraphOut(BaseModel):
    """``GET /api/v1/graph``: jobs and the edges between them, ``[parent, child]``."""

    jobs: list[GraphNode]
    after: list[list[str]] = Field(description="dependencies: [job, the job that runs after it]")
    subjobs: list[list[str]] = Field(description="[job, a sub-job it created]")
    truncated: bool


def graph_out(graph: Graph) -> dict[str, Any]:
    return {
        "jobs": [
            {
                "id": job.id,
                "type": job.type,
                "phase": job.phase.value,
                "reason": job.reason,
                "parent": job.parent_id,
            }
            for job in graph.jobs
        ],
        "after": [list(edge) for edge in graph.after],
        "subjobs": [list(edge) for edge in graph.subjobs],
        "truncated": graph.truncated,
    }


def event_out(event: Event) -> dict[str, Any]:
    return {
        "n": event.n,
        "at": iso(event.at),
        "name": event.name,
        "from_phase": event.from_phase.value if event.from_phase else None,
        "to_phase": event.to_phase.value if event.to_phase else None,
        "actor": event.actor,
        "data": event.data,
    }


def condition_out(job: Job, stored: WaitingCondition) -> dict[str, Any]:
    """``GET /api/v1/jobs/{id}/wait_for``."""
    condition = stored.condition
    waiting = job.phase.value == "QUEUED" and job.reason == "waiting for data"
    return {
        "id": job.id,
        "paths": list(condition.paths),
        "mode": condition.mode,
        "timeout": condition.timeout,
        "marker": condition.marker,
        "stable_seconds": condition.stable_seconds,
        "waiting": waiting,
        "deadline": iso(stored.deadline),
        "released": iso(stored.released_at),
        "released_by": stored.released_by,
    }


def hex_id(job_id: str) -> str:
    return uuid.UUID(job_id).hex
