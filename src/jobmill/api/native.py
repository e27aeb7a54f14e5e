"""The native JSON API under ``/api/v1``: a thin face over ``JobService``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from jobmill.api.auth import current_user
from jobmill.api.download import send_file
from jobmill.api.responses import COMMON, errors
from jobmill.api.schemas import (
    DetailsOut,
    EventOut,
    JobBatchCreate,
    JobCreate,
    JobOut,
    JobPage,
    RenderOut,
    condition_out,
    event_out,
    job_out,
)
from jobmill.domain.errors import NotFound, ValidationError
from jobmill.domain.jobs import JobFilter
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
    )


@router.get("/jobtypes", tags=["job types"])
def list_jobtypes(jobs: ServiceDep, _user: UserDep) -> list[dict[str, Any]]:
    """Every job type with its typed parameters."""
    return [jt.schema_dict() for _, jt in sorted(jobs.jobtypes.items())]


@router.get("/jobtypes/{name}", tags=["job types"], responses=errors(404))
def get_jobtype(name: str, jobs: ServiceDep, _user: UserDep) -> dict[str, Any]:
    """One job type: the full typed parameter schema."""
    return jobs.jobtype(name).schema_dict()


@router.post("/jobs", status_code=201, response_model=JobOut, responses=errors(507))
def create_job(body: JobCreate, jobs: ServiceDep, user: UserDep) -> Response:
    """Create a job; it is validated against its job type (422 names the bad field)."""
    job = jobs.create(user, _request(body))
    return JSONResponse(
        job_out(job), status_code=201, headers={"Location": f"/api/v1/jobs/{job.id}"}
    )


@router.post("/jobs/render", response_model=RenderOut, responses=errors(409))
def render_job(body: JobCreate, jobs: ServiceDep, user: UserDep) -> dict[str, Any]:
    """A dry run: validate the job exactly as ``POST /jobs`` does (the same 4xx answers) and
    return the script or submit description its executor would be given. Nothing is created:
    no job, no event, no file or directory."""
    rendered = jobs.render(user, _request(body))
    return {"executor": rendered.executor, "script": rendered.script, "job_id": rendered.job_id}


@router.post("/jobs/batch", status_code=201, responses=errors(507))
def create_jobs(body: JobBatchCreate, jobs: ServiceDep, user: UserDep) -> dict[str, Any]:
    """Create many jobs in one request and one transaction: all or nothing."""
    created = jobs.create_many(user, [_request(j) for j in body.jobs])
    return {"count": len(created), "ids": [job.id for job in created]}


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    jobs: ServiceDep,
    user: UserDep,
    phase: Annotated[list[str] | None, Query(description="repeatable")] = None,
    type: str | None = None,
    owner: str | None = None,
    run_id: str | None = None,
    created_after: str | None = None,
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
    )
    page = jobs.list(user, flt, limit=limit, cursor=cursor)
    return JSONResponse({"jobs": [job_out(j) for j in page.jobs], "next_cursor": page.next_cursor})


@router.get("/jobs/{job_id}", response_model=JobOut, responses=errors(404))
def get_job(job_id: str, jobs: ServiceDep, user: UserDep) -> Response:
    return JSONResponse(job_out(jobs.get(user, job_id)))


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
    return JSONResponse(job_out(jobs.abort(user, job_id)))


@router.post(
    "/jobs/{job_id}/hold", response_model=JobOut, responses=errors(404, 409, 503)
)
def hold_job(job_id: str, jobs: ServiceDep, user: UserDep) -> Response:
    """Keep a QUEUED job from starting (HELD): in the database, or in its batch system. 409
    for a job that started or is in another phase; 503 when the batch system cannot be asked."""
    return JSONResponse(job_out(jobs.hold(user, job_id)))


@router.post(
    "/jobs/{job_id}/release", response_model=JobOut, responses=errors(404, 409, 503)
)
def release_job(job_id: str, jobs: ServiceDep, user: UserDep) -> Response:
    """Let a HELD job start again (back to QUEUED)."""
    return JSONResponse(job_out(jobs.release(user, job_id)))


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


@router.post("/jobs/{job_id}/run", response_model=JobOut, responses=errors(404, 409))
def run_job(job_id: str, jobs: ServiceDep, user: UserDep) -> Response:
    """Queue a PENDING job."""
    return JSONResponse(job_out(jobs.run(user, job_id)))


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
    from starlette.concurrency import run_in_threadpool

    report = await run_in_threadpool(jobs.report, job_id, token, payload)
    return JSONResponse({"id": job_id, "report": report})
