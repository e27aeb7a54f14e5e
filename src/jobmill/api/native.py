"""The native JSON API under ``/api/v1``: a thin face over ``JobService``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from jobmill.api.auth import current_user
from jobmill.api.download import send_file
from jobmill.api.pipelinejobs import pipeline_field
from jobmill.api.responses import COMMON, errors
from jobmill.api.schemas import (
    DetailsOut,
    EventOut,
    GraphOut,
    JobBatchCreate,
    JobBatchOut,
    JobClone,
    JobCreate,
    JobEdit,
    JobOut,
    JobPage,
    LinkCreate,
    RenderOut,
    condition_out,
    event_out,
    graph_out,
    job_out,
)
from jobmill.domain.errors import NotFound, ValidationError
from jobmill.domain.jobs import Job, JobFilter
from jobmill.domain.lifecycle import Phase
from jobmill.domain.values import INT32_MAX, INT_MAX
from jobmill.service.jobs import JobRequest, JobService, User, parse_time

router = APIRouter(prefix="/api/v1", tags=["jobs"], responses=errors(*COMMON))
UserDep = Annotated[User, Depends(current_user)]


REPORT_REQUEST: dict[str, Any] = {
    "parameters": [
        {
            "name": "token",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "the job's own token (or Authorization: Bearer, X-Jobmill-Token)",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {"type": "object", "description": "top-level keys; counters by name"},
                        {"type": "array", "items": {"type": "object"}, "description": "pairs"},
                    ]
                }
            }
        },
    },
}
"""The report's request, which the handler reads itself (``BATCH_UPDATE_URL`` semantics)."""


async def service(request: Request) -> JobService:
    jobs: JobService = request.app.state.jobmill.jobs
    return jobs


ServiceDep = Annotated[JobService, Depends(service)]


def _request(body: JobCreate) -> JobRequest:
    return JobRequest(
        type=body.type,
        parameters=body.parameters,
        run_id=body.run_id,
        executor=body.executor,
        execution_duration=body.execution_duration,
        log_dir=body.log_dir,
        start=body.phase == "QUEUED",
        wait_for=body.wait_for.condition() if body.wait_for else None,
        tags=body.tags,
        after=body.after,
        on_parent_failure=body.on_parent_failure,
    )


def _one(
    jobs: JobService, job: Job, status_code: int = 200, pipeline: dict[str, Any] | None = None
) -> JSONResponse:
    """One job as ``JobOut``, with its tags, and its ``version`` as the ``ETag``; ``pipeline``:
    its PipelineJobs status, if it is a PipelineJob."""
    body = job_out(jobs.with_links([jobs.with_tags(job)])[0])
    if pipeline is not None:
        body["pipeline"] = pipeline
    return JSONResponse(body, status_code=status_code, headers={"ETag": f'"{job.event_count}"'})


def _if_match(request: Request) -> int | None:
    """The ``version`` an ``If-Match`` header names (``"7"``, ``W/"7"`` or ``7``); None
    without one (or ``*``)."""
    raw = request.headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 10:
        raise ValidationError(
            'If-Match: give the job\'s version (its ETag), such as "7"', field="If-Match"
        )
    return int(text)


@router.get("/jobtypes", tags=["job types"])
def list_jobtypes(jobs: ServiceDep, _user: UserDep) -> list[dict[str, Any]]:
    """Every job type with its typed parameters."""
    return [jt.schema_dict() for _, jt in sorted(jobs.jobtypes.items())]


@router.get("/jobtypes/{name}", tags=["job types"], responses=errors(404))
def get_jobtype(name: str, jobs: ServiceDep, _user: UserDep) -> dict[str, Any]:
    """One job type: the full typed parameter schema."""
    return jobs.jobtype(name).schema_dict()


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="retry safely: a repeat answers what this key created (24 h)",
    ),
]


@router.post("/jobs", status_code=201, response_model=JobOut, responses=errors(409, 507))
async def create_job(
    body: JobCreate,
    jobs: ServiceDep,
    user: UserDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Create a job; it is validated against its job type (422 names the bad field).

    With an ``Idempotency-Key`` a retry of the same request answers the job the first one
    created, with ``Idempotent-Replayed: true``; the same key with another body is a 409."""
    headers: dict[str, str] = {}
    if idempotency_key is None:
        job = await jobs.create_async(user, _request(body))
    else:
        job, replayed = await jobs.create_once_async(
            user, _request(body), idempotency_key, body.model_dump(mode="json")
        )
        if replayed:
            headers["Idempotent-Replayed"] = "true"
    return JSONResponse(
        job_out(job),  # a new job has no dependents or sub-jobs yet; ``after`` is filled in
        status_code=201,
        headers={"Location": f"/api/v1/jobs/{job.id}", **headers},
    )


# The hot paths first: routes are matched in order, one by one.
@router.post(
    "/jobs/{job_id}/report",
    tags=["reports"],
    responses=errors(404, 409),
    openapi_extra=REPORT_REQUEST,
)
async def post_report(job_id: str, request: Request) -> Response:
    """Merge a progress report into the job's report, authorised by the job's own token.

    The token comes as ``?token=`` (so ``BATCH_UPDATE_URL`` works unchanged), as
    ``Authorization: Bearer``, or as ``X-Jobmill-Token``.
    """
    token = request.query_params.get("token") or request.headers.get("x-jobmill-token")
    auth = request.headers.get("authorization", "")
    if not token and auth.lower().startswith("bearer "):
        token = auth[7:].strip()
    try:
        payload = await request.json()
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        raise ValidationError("the body must be JSON", field="body") from None
    jobs: JobService = request.app.state.jobmill.jobs
    report = await jobs.report_async(job_id, token, payload)
    return JSONResponse({"id": job_id, "report": report})


@router.post("/jobs/render", response_model=RenderOut, responses=errors(409))
def render_job(body: JobCreate, jobs: ServiceDep, user: UserDep) -> dict[str, Any]:
    """A dry run: validate the job exactly as ``POST /jobs`` does (the same 4xx answers) and
    return the script or submit description its executor would be given. Nothing is created:
    no job, no event, no file or directory."""
    rendered = jobs.render(user, _request(body))
    return {"executor": rendered.executor, "script": rendered.script, "job_id": rendered.job_id}


@router.post(
    "/jobs/batch", status_code=201, response_model=JobBatchOut, responses=errors(409, 507)
)
def create_jobs(
    body: JobBatchCreate,
    jobs: ServiceDep,
    user: UserDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Create many jobs in one request and one transaction: all or nothing.

    With an ``Idempotency-Key`` a retry of the same request answers the jobs the first one
    created, with ``Idempotent-Replayed: true``; the same key with another body is a 409."""
    requests = [_request(j) for j in body.jobs]
    dumped = body.model_dump(mode="json") if idempotency_key is not None else None
    created, replayed = jobs.create_many(user, requests, idempotency_key, dumped)
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    answer = {"count": len(created), "ids": [job.id for job in created]}
    return JSONResponse(answer, status_code=201, headers=headers)


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    jobs: ServiceDep,
    user: UserDep,
    phase: Annotated[list[str] | None, Query(description="repeatable")] = None,
    type: str | None = None,
    owner: str | None = None,
    run_id: str | None = None,
    created_after: str | None = None,
    tag: str | None = None,
    id_prefix: Annotated[str | None, Query(description="the start of the job id")] = None,
    seq_min: Annotated[int | None, Query(ge=0, le=INT32_MAX)] = None,
    seq_max: Annotated[int | None, Query(ge=0, le=INT32_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> Response:
    """Jobs, newest first, with filters and cursor pagination."""
    phases = []
    for value in phase or []:
        try:
            phases.append(Phase(value.upper()))
        except ValueError:
            raise ValidationError(f"unknown phase '{value}'", field="phase") from None
    flt = JobFilter(
        phases=phases,
        type=type,
        owner=owner,
        run_id=run_id,
        created_after=parse_time(created_after, "created_after") if created_after else None,
        tag=tag,
        id_prefix=id_prefix,
        seq_min=seq_min,
        seq_max=seq_max,
    )
    page = jobs.list(user, flt, limit=limit, cursor=cursor)
    listed = [job_out(j) for j in jobs.with_links(list(page.jobs))]
    return JSONResponse({"jobs": listed, "next_cursor": page.next_cursor})


@router.get("/jobs/{job_id}", response_model=JobOut, responses=errors(404))
def get_job(job_id: str, jobs: ServiceDep, user: UserDep, request: Request) -> Response:
    """One job, with its ``version`` as the ``ETag`` (for ``If-Match``), and its PipelineJobs
    status as ``pipeline`` if it is a PipelineJob."""
    job = jobs.get(user, job_id)
    return _one(jobs, job, pipeline=pipeline_field(request, job.id))


@router.get("/jobs/{job_id}/wait_for", tags=["triggers"], responses=errors(404))
def job_wait_for(job_id: str, jobs: ServiceDep, user: UserDep) -> dict[str, Any]:
    """What the job waits (or waited) for, and what released it; 404 if it has no condition."""
    job = jobs.get(user, job_id)
    stored = jobs.data.condition(job.id) if jobs.data is not None else None
    if stored is None:
        raise NotFound(f"job {job.id} does not wait for data", field="id")
    return condition_out(job, stored)


@router.post("/jobs/{job_id}/abort", response_model=JobOut, responses=errors(404, 409))
def abort_job(job_id: str, jobs: ServiceDep, user: UserDep) -> Response:
    """Abort a job: a running one gets SIGTERM, then SIGKILL after the grace period."""
    return _one(jobs, jobs.abort(user, job_id))


@router.post(
    "/jobs/{job_id}/hold", response_model=JobOut, responses=errors(404, 409, 503)
)
def hold_job(job_id: str, jobs: ServiceDep, user: UserDep) -> Response:
    """Keep a QUEUED job from starting (HELD): in the database, or in its batch system. 409
    for a job that started or is in another phase; 503 when the batch system cannot be asked."""
    return _one(jobs, jobs.hold(user, job_id))


@router.post(
    "/jobs/{job_id}/release", response_model=JobOut, responses=errors(404, 409, 503)
)
def release_job(job_id: str, jobs: ServiceDep, user: UserDep) -> Response:
    """Let a HELD job start again (back to QUEUED)."""
    return _one(jobs, jobs.release(user, job_id))


@router.get(
    "/jobs/{job_id}/details", response_model=DetailsOut, responses=errors(404, 409, 503)
)
def job_details(job_id: str, jobs: ServiceDep, user: UserDep, request: Request) -> Response:
    """What the backend says about the job (``scontrol show job``, ``condor_q -l``, ``bjobs
    -l``, the local process), as JSON, or as plain text with ``Accept: text/plain``. 409 for a
    job never handed to a backend; 503 when the backend cannot be asked."""
    job, text = jobs.details(user, job_id)
    if request.headers.get("accept", "").startswith("text/plain"):
        return Response(text, media_type="text/plain; charset=utf-8")
    return JSONResponse(
        {
            "id": job.id,
            "phase": job.phase.value,
            "executor": job.executor,
            "native_id": job.native_id,
            "details": text,
        }
    )


@router.post(
    "/jobs/{job_id}/links", tags=["workflows"], response_model=JobOut, responses=errors(404, 409)
)
def link_job(job_id: str, body: LinkCreate, jobs: ServiceDep, user: UserDep) -> Response:
    """The job also runs after the jobs ``after`` (while it is PENDING or QUEUED waiting for
    upstream jobs). 409 for a link that would close a cycle (the message names it), for a
    job that is not waiting, or a parent that can never complete for it."""
    return _one(jobs, jobs.link(user, job_id, body.after))


@router.delete(
    "/jobs/{job_id}/links/{parent_id}",
    tags=["workflows"],
    response_model=JobOut,
    responses=errors(404, 409),
)
def unlink_job(job_id: str, parent_id: str, jobs: ServiceDep, user: UserDep) -> Response:
    """The job no longer runs after ``parent_id``; it is released when it waited for nothing
    else."""
    return _one(jobs, jobs.unlink(user, job_id, parent_id))


@router.get("/graph", tags=["workflows"], response_model=GraphOut)
def job_graph(
    jobs: ServiceDep,
    user: UserDep,
    job: Annotated[str | None, Query(description="a job: the jobs connected to it")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 100_000,
) -> Response:
    """Jobs connected by dependencies (``after``) and sub-jobs, as nodes and edges; without
    ``job``, every job of the caller that has a dependency or a sub-job (422 naming ``job``
    when there is no such job)."""
    return JSONResponse(graph_out(jobs.graph(user, job, limit=limit)))


@router.post("/jobs/{job_id}/run", response_model=JobOut, responses=errors(404, 409))
def run_job(job_id: str, jobs: ServiceDep, user: UserDep) -> Response:
    """Queue a PENDING job."""
    return _one(jobs, jobs.run(user, job_id))


# -- the manager's verbs (docs/workflows.md) ------------------------------------------------


@router.patch("/jobs/{job_id}", response_model=JobOut, responses=errors(404, 409))
def edit_job(
    job_id: str, body: JobEdit, jobs: ServiceDep, user: UserDep, request: Request
) -> Response:
    """Change parameters of a PENDING job, validated by its job type (422 names the
    parameter). With ``If-Match: "<version>"``, only if the job has not changed since it was
    read at that version; 409 when it has, or when it is no longer PENDING."""
    return _one(jobs, jobs.edit(user, job_id, body.parameters, version=_if_match(request)))


@router.post("/jobs/{job_id}/reset", response_model=JobOut, responses=errors(404, 409))
def reset_job(job_id: str, jobs: ServiceDep, user: UserDep, request: Request) -> Response:
    """Put a job in ERROR or ABORTED back to PENDING (its history stays in its events)."""
    return _one(jobs, jobs.reset(user, job_id, version=_if_match(request)))


@router.post(
    "/jobs/{job_id}/clone", status_code=201, response_model=JobOut, responses=errors(404, 507)
)
def clone_job(
    job_id: str, jobs: ServiceDep, user: UserDep, body: JobClone | None = None
) -> Response:
    """A new job with the job's type, parameters and tags: PENDING, or QUEUED at once."""
    start = body is not None and body.phase == "QUEUED"
    job = jobs.clone(user, job_id, start=start)
    response = _one(jobs, job, status_code=201)
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return response


@router.get("/jobs/{job_id}/tags", responses=errors(404))
def job_tags(job_id: str, jobs: ServiceDep, user: UserDep) -> list[str]:
    """The job's tags, sorted."""
    return list(jobs.shown(user, job_id).tags)


@router.put("/jobs/{job_id}/tags/{tag}", response_model=JobOut, responses=errors(404, 409))
def add_tag(job_id: str, tag: str, jobs: ServiceDep, user: UserDep, request: Request) -> Response:
    """Tag the job (a no-op when it has the tag; 422 for a value that is not a tag)."""
    return _one(jobs, jobs.tag(user, job_id, tag, version=_if_match(request)))


@router.delete("/jobs/{job_id}/tags/{tag}", response_model=JobOut, responses=errors(404, 409))
def remove_tag(
    job_id: str, tag: str, jobs: ServiceDep, user: UserDep, request: Request
) -> Response:
    """Remove a tag from the job (404 naming ``tag`` when it does not have it)."""
    return _one(jobs, jobs.untag(user, job_id, tag, version=_if_match(request)))


@router.delete("/jobs/{job_id}", status_code=204, responses=errors(404))
def delete_job(job_id: str, jobs: ServiceDep, user: UserDep) -> Response:
    """Delete a job, its events and its files (a running job is aborted first)."""
    jobs.delete(user, job_id)
    return Response(status_code=204)


@router.get("/jobs/{job_id}/events", response_model=list[EventOut], responses=errors(404))
def job_events(
    job_id: str,
    jobs: ServiceDep,
    user: UserDep,
    after: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> Response:
    """The job's history, oldest first."""
    return JSONResponse([event_out(e) for e in jobs.events(user, job_id, after=after, limit=limit)])


@router.get("/jobs/{job_id}/logs/{stream}", response_class=Response, responses=errors(404))
def job_log(
    job_id: str,
    stream: str,
    jobs: ServiceDep,
    user: UserDep,
    offset: Annotated[int, Query(ge=0, le=INT_MAX)] = 0,
    tail: Annotated[int | None, Query(ge=0, le=INT_MAX)] = None,
    limit: Annotated[int, Query(ge=0, le=8 << 20)] = 1 << 20,
) -> Response:
    """``stdout`` or ``stderr``: up to ``limit`` bytes (default 1 MiB, at most 8 MiB) from
    ``offset``, or the last ``tail`` bytes (at most ``limit``).

    Headers: ``X-Log-Offset`` (where this slice starts), ``X-Log-Size`` (the file's size) and
    ``X-Log-Exists`` (``false`` while the job has written nothing yet). A slice shorter than
    ``X-Log-Size - X-Log-Offset`` is a page: ask again from ``X-Log-Offset`` + its length
    (``jobmill logs`` and ``Client.log`` callers do) to read the whole log.
    """
    chunk = jobs.read_log(user, job_id, stream, offset=offset, tail=tail, limit=limit)
    return Response(
        chunk.text,
        media_type="text/plain; charset=utf-8",
        headers={
            "X-Log-Offset": str(chunk.offset),
            "X-Log-Size": str(chunk.size),
            "X-Log-Exists": "true" if chunk.exists else "false",
        },
    )


@router.get("/jobs/{job_id}/results", responses=errors(404))
def job_results(job_id: str, jobs: ServiceDep, user: UserDep, request: Request) -> Response:
    """The result files the job type declares, with size, content type and download URL."""
    base = str(request.base_url).rstrip("/")
    return JSONResponse(
        [
            {
                "id": r.id,
                "size": r.size,
                "content_type": r.content_type,
                "url": f"{base}/api/v1/jobs/{job_id}/results/{r.id}",
            }
            for r in jobs.results(user, job_id)
        ]
    )


@router.get(
    "/jobs/{job_id}/results/{result_id:path}", response_class=FileResponse, responses=errors(404)
)
def job_result(job_id: str, result_id: str, jobs: ServiceDep, user: UserDep) -> Response:
    """Download one result file (403 for one a symbolic link leads to)."""
    result, handle = jobs.open_result(user, job_id, result_id)
    return send_file(handle, result.content_type, filename=result.path.name)
