"""The ARP face (SLAC's Automatic Run Processor) under ``/api/v1/arp``: a thin layer over
``ExperimentService``. See docs/triggers.md, "Experiments and autorun (ARP)".

* ``/experiments/{experiment}/definitions`` (GET, POST), ``.../definitions/{name}`` (GET,
  PATCH ``{"autorun", "backfill"?}``, DELETE), ``.../definitions/{name}/backfill`` (POST);
* ``/experiments/{experiment}/runs`` (GET), ``.../runs/{run}`` (GET: the run view),
  ``.../runs/{run}/start`` and ``.../end`` (POST ``{"parameters"?}``), ``.../runs/{run}/apply``
  (POST ``{"definition"}``);
* ``/experiments/{experiment}/jobs/{id}`` (GET, DELETE ``?kill=true``), ``.../kill`` (POST),
  ``.../log`` and ``.../details`` (GET);
* ``/experiments/{experiment}/status``: every job's merged report, the ARP FAQ's
  ``batches_status``;
* ``/experiments`` (GET): every experiment's numeric id and name. ``{experiment}`` in every path
  is a name or that numeric id.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from jobmill.api.auth import current_user
from jobmill.api.responses import COMMON, TEXT, ErrorDetail, errors
from jobmill.domain.arp import MAX_RUN, Definition, Run, status_names
from jobmill.domain.errors import JobmillError, Kind, ValidationError, http_status
from jobmill.domain.jobs import iso
from jobmill.domain.values import INT32_MAX, INT_MAX
from jobmill.service.experiments import Entry, ExperimentService, RunEnded
from jobmill.service.jobs import User

router = APIRouter(prefix="/api/v1/arp", tags=["arp"], responses=errors(*COMMON))
BASE = "/experiments/{experiment}"
UserDep = Annotated[User, Depends(current_user)]
RunPath = Annotated[int, Path(ge=0, le=MAX_RUN, description="the run number")]
Limit = Annotated[int, Query(ge=1, le=10_000)]


class KillRefused(BaseModel):
    """``POST .../kill`` of a job that had already ended."""

    success: bool
    error: ErrorDetail


KILL_REFUSED: dict[int | str, dict[str, Any]] = {
    409: {"model": KillRefused, "description": "the job had already ended"}
}
TEXT_OK: dict[int | str, dict[str, Any]] = {200: {"content": TEXT, "description": "the log"}}


async def _service(request: Request) -> ExperimentService:
    experiments: ExperimentService = request.app.state.jobmill.experiments
    return experiments


ServiceDep = Annotated[ExperimentService, Depends(_service)]


# -- request bodies ---------------------------------------------------------------------------


class DefinitionCreate(BaseModel):
    """A new definition; ``hash`` is ARP's word for ``name``."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=64)
    hash: str | None = Field(default=None, max_length=64)
    executable: str = Field(max_length=4096, description="absolute path")
    parameters: str = Field(default="", max_length=4096, description="space-separated")
    autorun: bool = False
    executor: str | None = Field(default=None, max_length=32)


class DefinitionChange(BaseModel):
    """Switch autorun; ``backfill`` also processes every ended run not processed yet."""

    model_config = ConfigDict(extra="forbid")

    autorun: bool
    backfill: bool = False


class Backfill(BaseModel):
    """The runs to backfill (inclusive; all ended runs when left out)."""

    model_config = ConfigDict(extra="forbid")

    first: int | None = Field(default=None, ge=0, le=MAX_RUN)
    last: int | None = Field(default=None, ge=0, le=MAX_RUN)


class RunEdge(BaseModel):
    """A run start or end; ``parameters`` are merged into the run's."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] | None = None


class Apply(BaseModel):
    """Apply a definition (``definition``, or ARP's ``hash``) to the run."""

    model_config = ConfigDict(extra="forbid")

    definition: str | None = Field(default=None, max_length=64)
    hash: str | None = Field(default=None, max_length=64)


# -- rendering --------------------------------------------------------------------------------


def definition_out(definition: Definition) -> dict[str, Any]:
    return {
        "id": definition.id,
        "experiment": definition.experiment,
        "name": definition.name,
        "hash": definition.name,
        "executable": definition.executable,
        "parameters": definition.parameters,
        "executor": definition.executor,
        "autorun": definition.autorun,
        "autorun_by": definition.autorun_by,
        "autorun_at": iso(definition.autorun_at),
        "created_by": definition.created_by,
        "created_at": iso(definition.created_at),
        "job_type": definition.jobtype_name,
    }


def run_out(run: Run) -> dict[str, Any]:
    return {
        "experiment": run.experiment,
        "run": run.run,
        "parameters": run.parameters,
        "started_at": iso(run.started_at),
        "ended_at": iso(run.ended_at),
    }


def entry_out(entry: Entry) -> dict[str, Any]:
    """A job's stored JSON as ARP shows it: what the job posted to ``BATCH_UPDATE_URL``
    (merged: top-level keys, and counters by name; values scalar or ``[value, colour]``) plus
    what jobmill knows. jobmill's keys win; a posted value they hide stays as
    ``reported_<key>``."""
    job, app = entry.job, entry.application
    names = status_names(job, slow=entry.slow)
    ours: dict[str, Any] = {
        "status": names.status,
        "workflow_status": names.workflow,
        "phase": job.phase.value,
        "reason": job.reason,
        "lsf_id": job.native_id,
        "tool_id": job.native_id,
        "job_id": job.id,
        "job_database_id": job.seq,
        "experiment": app.experiment,
        "run_num": app.run,
        "hash": app.definition,
        "attempt": app.attempt,
        "user": job.owner,
        "trigger": app.trigger,
        "executor": job.executor,
        "submit_time": iso(job.created_at),
        "started": iso(job.started_at),
        "ended": iso(job.ended_at),
        "exit_code": job.exit_code,
        "error": job.error,
    }
    out: dict[str, Any] = {"counters": {}}
    for key, value in job.report.items():
        if key in ours and value != ours[key]:
            out[f"reported_{key}"] = value
        else:
            out[key] = value
    out.update(ours)
    return out


def outcome_out(outcome: RunEnded) -> dict[str, Any]:
    return {
        "jobs": [entry_out(e) for e in outcome.created],
        "errors": outcome.errors,
    }


def _one_of(first: str | None, second: str | None, field: str) -> str:
    value = first if first is not None else second
    if not value:
        raise ValidationError(f"missing {field}", field=field)
    return value


# -- experiments ------------------------------------------------------------------------------


@router.get("/experiments")
def list_experiments(svc: ServiceDep, _user: UserDep) -> Response:
    """Every experiment jobmill knows (it has a definition or a run), with its numeric id."""
    return JSONResponse([{"id": i, "name": name} for i, name in svc.experiments()])


# -- definitions ------------------------------------------------------------------------------


@router.get(BASE + "/definitions", responses=errors(404))
def list_definitions(experiment: str, svc: ServiceDep, _user: UserDep) -> Response:
    """The experiment's definitions (ARP's "Batch defs")."""
    return JSONResponse([definition_out(d) for d in svc.definitions(experiment)])


@router.post(BASE + "/definitions", status_code=201, responses=errors(404, 409))
def create_definition(
    experiment: str, body: DefinitionCreate, svc: ServiceDep, user: UserDep
) -> Response:
    """Define an executable (absolute path) and its space-separated parameters."""
    definition = svc.define(
        user,
        experiment,
        name=_one_of(body.name, body.hash, "name"),
        executable=body.executable,
        parameters=body.parameters,
        executor=body.executor,
        autorun=body.autorun,
    )
    location = f"/api/v1/arp/experiments/{experiment}/definitions/{definition.name}"
    return JSONResponse(definition_out(definition), status_code=201, headers={"Location": location})


@router.get(BASE + "/definitions/{name}", responses=errors(404))
def get_definition(experiment: str, name: str, svc: ServiceDep, _user: UserDep) -> Response:
    return JSONResponse(definition_out(svc.definition(experiment, name)))


@router.patch(BASE + "/definitions/{name}", responses=errors(404, 409))
def change_definition(
    experiment: str, name: str, body: DefinitionChange, svc: ServiceDep, user: UserDep
) -> Response:
    """Switch autorun on (the jobs it creates are yours) or off."""
    if body.backfill and not body.autorun:
        raise ValidationError("backfill goes with autorun: true", field="backfill")
    definition = svc.set_autorun(user, experiment, name, body.autorun)
    out = definition_out(definition)
    if body.backfill:
        out["backfill"] = outcome_out(svc.backfill(user, experiment, name))
    return JSONResponse(out)


@router.delete(BASE + "/definitions/{name}", status_code=204, responses=errors(404, 409))
def delete_definition(experiment: str, name: str, svc: ServiceDep, user: UserDep) -> Response:
    svc.delete_definition(user, experiment, name)
    return Response(status_code=204)


@router.post(BASE + "/definitions/{name}/backfill", responses=errors(404))
def backfill(
    experiment: str, name: str, svc: ServiceDep, user: UserDep, body: Backfill | None = None
) -> Response:
    """Apply the definition to every ended run it was never applied to (jobs are yours)."""
    body = body or Backfill()
    return JSONResponse(
        outcome_out(svc.backfill(user, experiment, name, first=body.first, last=body.last))
    )


# -- runs -------------------------------------------------------------------------------------


@router.get(BASE + "/runs", responses=errors(404))
def list_runs(
    experiment: str,
    svc: ServiceDep,
    _user: UserDep,
    limit: Limit = 1000,
    before: Annotated[int | None, Query(ge=0, le=INT32_MAX)] = None,
) -> Response:
    """Runs, the highest number first (``before`` pages on)."""
    return JSONResponse([run_out(r) for r in svc.runs(experiment, limit=limit, before=before)])


History = Annotated[
    bool, Query(description="every attempt, not only the latest of each definition on each run")
]


@router.get(BASE + "/runs/{run}", responses=errors(404))
def get_run(
    experiment: str, run: RunPath, svc: ServiceDep, user: UserDep, history: History = False
) -> Response:
    """The run view: the run and its jobs (the latest attempt of each definition)."""
    found, entries = svc.run(user, experiment, run, history=history)
    return JSONResponse(run_out(found) | {"jobs": [entry_out(e) for e in entries]})


@router.post(BASE + "/runs/{run}/start", responses=errors(404, 409))
def start_run(
    experiment: str, run: RunPath, svc: ServiceDep, user: UserDep, body: RunEdge | None = None
) -> Response:
    """Start a run (the first start counts; replays are harmless)."""
    started = svc.start_run(user, experiment, run, (body or RunEdge()).parameters)
    return JSONResponse(run_out(started))


@router.post(BASE + "/runs/{run}/end", responses=errors(404, 409))
def end_run(
    experiment: str, run: RunPath, svc: ServiceDep, user: UserDep, body: RunEdge | None = None
) -> Response:
    """End a run: every autorun definition gets exactly one job for it (replays are safe)."""
    outcome = svc.end_run(user, experiment, run, (body or RunEdge()).parameters)
    ended = run_out(outcome.run) if outcome.run is not None else None
    return JSONResponse({"run": ended} | outcome_out(outcome))


@router.post(BASE + "/runs/{run}/apply", status_code=201, responses=errors(404, 409))
def apply(experiment: str, run: RunPath, body: Apply, svc: ServiceDep, user: UserDep) -> Response:
    """Apply a definition to the run by hand: a job of yours."""
    name = _one_of(body.definition, body.hash, "definition")
    entry = svc.apply(user, experiment, run, name)
    location = f"/api/v1/arp/experiments/{experiment}/jobs/{entry.job.id}"
    return JSONResponse(entry_out(entry), status_code=201, headers={"Location": location})


# -- jobs -------------------------------------------------------------------------------------


@router.get(BASE + "/jobs/{job_id}", responses=errors(404))
def get_job(experiment: str, job_id: str, svc: ServiceDep, user: UserDep) -> Response:
    return JSONResponse(entry_out(svc.entry(user, experiment, job_id)))


@router.post(BASE + "/jobs/{job_id}/kill", responses=errors(404) | KILL_REFUSED)
def kill_job(experiment: str, job_id: str, svc: ServiceDep, user: UserDep) -> Response:
    """Kill the job; ``success`` says whether it was (409 when it had already ended)."""
    try:
        entry = svc.kill(user, experiment, job_id)
    except JobmillError as exc:
        if exc.kind is not Kind.CONFLICT:
            raise
        body = {"success": False, "error": exc.to_dict()}
        return JSONResponse(body, status_code=http_status(exc))
    return JSONResponse({"success": True, "job": entry_out(entry)})


@router.delete(BASE + "/jobs/{job_id}", responses=errors(404, 409))
def delete_job(
    experiment: str,
    job_id: str,
    svc: ServiceDep,
    user: UserDep,
    kill: Annotated[bool, Query(description="kill a job that has not ended first")] = False,
) -> Response:
    """Take the job off the run view (it stays in jobmill). A job that has not ended is refused
    (409, field ``kill``) unless ``kill=true``."""
    killed = svc.remove(user, experiment, job_id, kill=kill)
    return JSONResponse({"success": True, "job_id": job_id, "killed": killed})


@router.get(
    BASE + "/jobs/{job_id}/log", response_class=Response, responses=errors(404, 503) | TEXT_OK
)
def job_log(
    experiment: str,
    job_id: str,
    svc: ServiceDep,
    user: UserDep,
    stream: str = "stdout",
    offset: Annotated[int, Query(ge=0, le=INT_MAX)] = 0,
    tail: Annotated[int | None, Query(ge=0, le=INT_MAX)] = None,
    limit: Annotated[int, Query(ge=0, le=8 << 20)] = 1 << 20,
) -> Response:
    """The job's log (``stdout`` or ``stderr``). No log yet is 404 with code ``no_log``; an
    empty log is 200 with an empty body."""
    chunk = svc.log(user, experiment, job_id, stream, offset=offset, tail=tail, limit=limit)
    return Response(
        chunk.text,
        media_type="text/plain; charset=utf-8",
        headers={"X-Log-Offset": str(chunk.offset), "X-Log-Size": str(chunk.size)},
    )


@router.get(BASE + "/jobs/{job_id}/details", responses=errors(404, 409, 503))
def job_details(experiment: str, job_id: str, svc: ServiceDep, user: UserDep) -> Response:
    """What the backend says about the job (ARP's ``bjobs -l``)."""
    entry, text = svc.details(user, experiment, job_id)
    return JSONResponse(
        {
            "job_id": entry.job.id,
            "executor": entry.job.executor,
            "native_id": entry.job.native_id,
            "details": text,
        }
    )


# -- the experiment's status ------------------------------------------------------------------


@router.get(BASE + "/status", responses=errors(404))
def status(
    experiment: str,
    svc: ServiceDep,
    user: UserDep,
    run: Annotated[int | None, Query(ge=0, le=MAX_RUN)] = None,
    after: Annotated[
        int, Query(ge=0, le=INT32_MAX, description="application id to continue after")
    ] = 0,
    limit: Limit = 1000,
    history: History = False,
) -> Response:
    """Every job of the experiment (yours; all for an administrator): its merged report,
    ARP status, backend id and ids. ``X-Next-After`` is set when more follow. The experiment
    is its name or its numeric id (ARP's ``batches_status/<experiment_id>``)."""
    entries = svc.entries(user, experiment, run=run, after=after, limit=limit, history=history)
    headers = {"X-Next-After": str(entries[-1].application.id)} if len(entries) == limit else {}
    return JSONResponse([entry_out(e) for e in entries], headers=headers)
