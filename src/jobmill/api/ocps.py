"""The OCPS Job Manager protocol (Rubin's prototype API): a thin face over ``JobService``.

Routes, under the configurable base path (``API_BASEPATH``, default ``/api/v1``):

* ``POST {base}/job``: ``type``, ``env`` (an object of environment variables) and ``log_dir``,
  as JSON or form-encoded; answers ``{"status", "msg", "job_id" (32 hex), "cluster_id"}``.
* ``GET {base}/job?id=<job_id>``: ``{"status", "msg", "job": {"clusterId", "state", ...}}``;
  an unknown id is ``status: "error"``, ``msg: "Job not found"`` with HTTP 200 (clients key on
  ``status``).
* ``GET {base}/schema/all`` and ``GET {base}/schema/{job_type}`` (from the draft OpenAPI spec).
* ``GET {base}/monitor/complete?id=<key>``: releases a job waiting for its ``<job_id>.dat``; the
  key is the ``monitor_key`` the submission answered with (see ``docs/triggers.md``).
* ``OPTIONS`` on each of them: 204 for CORS preflight.

CORS headers, which the prototype put on every answer, come from ``api/browser.py``, only for
the origins in ``JOBMILL_OCPS_CORS_ORIGINS``. Every error is the OCPS envelope
``{"status": "error", "msg": ..., "message": ...}`` (the prototype used both keys).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from jobmill.api.auth import current_user
from jobmill.api.responses import OCPS_ID, OCPS_SUBMIT, ocps_errors
from jobmill.domain.conditions import DataCondition
from jobmill.domain.errors import JobmillError, NotFound, ValidationError, http_status
from jobmill.domain.jobs import Job, iso
from jobmill.domain.jobtypes import JobType, Parameter
from jobmill.domain.lifecycle import Phase, Reason
from jobmill.service.jobs import JobRequest, JobService, User
from jobmill.service.triggers import DataTriggers, new_key

STATUS_OK = "ok"
STATUS_ERROR = "error"
JSON_TYPES = ("application/json", "application/javascript")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
LEGACY_TIME = "%A, %B %d, %Y %I:%M:%S"

STATES: dict[Phase, str] = {
    Phase.PENDING: "idle",
    Phase.QUEUED: "idle",
    Phase.EXECUTING: "running",
    Phase.COMPLETED: "completed",
    Phase.ERROR: "completed",
    Phase.ABORTED: "removed",
    Phase.HELD: "held",
    Phase.SUSPENDED: "suspended",
    Phase.UNKNOWN: "unknown",
    Phase.ARCHIVED: "completed",
}
"""UWS phase -> the HTCondor-like state names OCPS clients know (a failure is ``completed``
with ``phase: "error"`` and its ``exitCode``, as HTCondor reports a failed job)."""


# -- rendering --------------------------------------------------------------------------------


def envelope_error(message: str, status: int = 400, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"status": STATUS_ERROR, "msg": message, "message": message}
    if field is not None:
        body["field"] = field
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def ocps_state(job: Job) -> str:
    if job.phase is Phase.QUEUED and job.reason == Reason.DATA.value:
        return "init"
    return STATES[job.phase]


def cluster_id(native_id: str | None) -> int | str | None:
    """The integer HTCondor calls a cluster id: a local pid (``pid@start``), a batch job number
    (``123`` or ``123.0``), or the native id itself when it has no such number."""
    if not native_id:
        return None
    head = native_id.partition("@")[0].partition(".")[0]
    return int(head) if head.isdigit() else native_id


def job_dict(job: Job) -> dict[str, Any]:
    """The ``job`` object of ``GET {base}/job``."""
    out: dict[str, Any] = {
        "clusterId": cluster_id(job.native_id),
        "state": ocps_state(job),
        "jobId": uuid.UUID(job.id).hex,
        "type": job.type,
        "phase": job.phase.value.lower(),
        "input": dict(job.parameters),
        "timeSubmittedISO": iso(job.created_at),
    }
    if job.started_at is not None:
        out["timeStartedISO"] = iso(job.started_at)
    if job.exit_code is not None:
        out["exitCode"] = job.exit_code
    if job.error:
        out["error"] = job.error
    if job.terminal and job.ended_at is not None:
        ended = job.ended_at if job.ended_at.tzinfo else job.ended_at.replace(tzinfo=UTC)
        out["timeCompleted"] = ended.astimezone(UTC).strftime(LEGACY_TIME)
        out["timeCompletedISO"] = iso(ended)
    return out


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def env_entry(param: Parameter) -> dict[str, Any]:
    return {
        "name": param.env_name,
        "units": param.unit,
        "default": _text(param.default),
        "min": _text(param.min),
        "max": _text(param.max),
        "type": param.type.value,
        "required": param.required,
        "description": param.description,
    }


def schema_dict(jobtype: JobType) -> dict[str, Any]:
    """``GET {base}/schema/{job_type}``: the draft spec's shape; ``env`` lists the parameters
    delivered as environment variables (all of them for a ``job_specs.yaml`` type)."""
    return {
        "name": jobtype.name,
        "version": jobtype.version,
        "description": jobtype.description,
        "env": [env_entry(p) for p in jobtype.parameters.values() if p.deliver != "argv"],
    }


# -- the route class: the OCPS error envelope on every answer -------------------------------------


class OcpsRoute(APIRoute):
    """Renders errors (including authentication) as the OCPS envelope."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def ocps_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except JobmillError as exc:
                response = envelope_error(exc.message, http_status(exc, "ocps"), exc.field)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                response = envelope_error(f"invalid request: {first.get('msg', 'bad input')}")
            return response

        return ocps_handler


# -- request parsing --------------------------------------------------------------------------


async def request_args(request: Request) -> dict[str, Any]:
    """The arguments of a POST: a JSON object, or form fields (plus query arguments)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in FORM_TYPES:
        form = await request.form()
        args: dict[str, Any] = dict(request.query_params)
        args.update({k: v for k, v in form.multi_items() if isinstance(v, str)})
        return args
    body = await request.body()
    if content_type in JSON_TYPES or content_type.endswith("+json") or body.lstrip()[:1] == b"{":
        try:
            data = json.loads(body or b"null")
        except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
            raise ValidationError("the body is not valid JSON", field="body") from None
        if not isinstance(data, dict):
            raise ValidationError("the body must be a JSON object", field="body")
        return data
    if body.strip():
        args = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        return dict(request.query_params) | args
    return dict(request.query_params)


def required(args: Mapping[str, Any], name: str) -> Any:
    if name not in args:
        raise ValidationError(f"Missing argument {name}", field=name)
    return args[name]


def env_values(raw: Any) -> dict[str, Any]:
    """``env`` as an object; accepts a JSON string (form encoding) and the draft spec's list of
    ``{"name", "value"}``."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            raise ValidationError("env must be a JSON object", field="env") from None
    if isinstance(raw, list) and all(isinstance(e, dict) and "name" in e for e in raw):
        raw = {str(e["name"]): e.get("value") for e in raw}
    if not isinstance(raw, dict):
        raise ValidationError("env must be an object of environment variables", field="env")
    return raw


def to_parameters(jobtype: JobType | None, env: Mapping[str, Any]) -> dict[str, Any]:
    """Environment variable names -> parameter names (identical for ``job_specs.yaml`` types)."""
    if jobtype is None:
        return dict(env)
    by_env = {p.env_name: name for name, p in jobtype.parameters.items()}
    return {
        (key if key in jobtype.parameters else by_env.get(key, key)): value
        for key, value in env.items()
    }


def client_name(param: Parameter) -> str:
    return param.name if param.deliver == "argv" else param.env_name


def explain(exc: ValidationError, jobtype: JobType | None, parameters: Mapping[str, Any]) -> str:
    """A service validation error in OCPS words (``env`` for parameters, ``Invalid job type``)."""
    field = exc.field or ""
    if field == "type":
        return f"Invalid job type: {exc.message}"
    if field.startswith("parameters.") and jobtype is not None:
        if exc.message.startswith("missing required parameter"):
            missing = [
                client_name(p)
                for name, p in jobtype.parameters.items()
                if p.required and parameters.get(name) is None
            ]
            return f"missing required env var(s): {', '.join(missing)}"
        message = exc.message.replace("parameters.", "env.", 1)
        return message if message.startswith("env.") else f"env: {message}"
    if field and not exc.message.startswith(field):
        return f"{field}: {exc.message}"
    return exc.message


# -- the router -------------------------------------------------------------------------------


def _service(request: Request) -> JobService:
    jobs: JobService = request.app.state.jobmill.jobs
    return jobs


ServiceDep = Annotated[JobService, Depends(_service)]
UserDep = Annotated[User, Depends(current_user)]


def _preflight() -> Response:
    return Response(status_code=204)


DAT_FILE = "{job_hex}.dat"
"""What an OCPS job waits for: ``<job_id>.dat`` in the data root, as in the prototype."""
MONITOR_WAIT = 2.0


def waits_for_dat(request: Request, job_type: str) -> bool:
    """Whether OCPS jobs of this type wait for their ``.dat`` (``JOBMILL_OCPS_WAIT_FOR_DAT``)."""
    types = request.app.state.jobmill.settings.ocps_wait_for_dat
    return "*" in types or job_type in types


async def _started(data: DataTriggers, job: Job) -> Job:
    """The job once it has a backend id, or as it is after ``MONITOR_WAIT`` seconds."""
    deadline = time.monotonic() + MONITOR_WAIT
    while job.native_id is None and not job.terminal and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        now: Job | None = await run_in_threadpool(data.jobs.get, job.id)
        job = now or job
    return job


def make_router(basepath: str) -> APIRouter:
    """The OCPS routes under ``basepath`` (``API_BASEPATH``, default ``/api/v1``)."""
    prefix = "/" + basepath.strip("/") if basepath.strip("/") else ""
    router = APIRouter(
        prefix=prefix,
        tags=["ocps"],
        route_class=OcpsRoute,
        responses=ocps_errors(400, 401, 403, 413),
    )

    for path in ("/job", "/schema/{job_type}", "/monitor/complete"):
        router.add_api_route(
            path, _preflight, methods=["OPTIONS"], status_code=204, include_in_schema=False
        )

    @router.post("/job", responses=ocps_errors(507), openapi_extra=OCPS_SUBMIT)
    async def submit_job(request: Request, jobs: ServiceDep, user: UserDep) -> Response:
        """Submit a job: ``type``, ``env`` (object) and ``log_dir``; validated at once."""
        args = await request_args(request)
        job_type = required(args, "type")
        env = env_values(required(args, "env"))
        log_dir = required(args, "log_dir")
        if not isinstance(job_type, str):
            raise ValidationError("Invalid job type: type must be a string", field="type")
        if not isinstance(log_dir, str):
            raise ValidationError("log_dir must be a directory path", field="log_dir")
        jobtype = jobs.jobtypes.get(job_type)
        parameters = to_parameters(jobtype, env)
        key = new_key() if waits_for_dat(request, job_type) else None
        job_request = JobRequest(
            type=job_type,
            parameters=parameters,
            log_dir=log_dir,
            allow_unknown=True,
            wait_for=DataCondition(paths=(DAT_FILE,), key=key) if key else None,
        )
        try:
            job = await run_in_threadpool(jobs.create, user, job_request)
        except ValidationError as exc:
            field = exc.field
            if field and field.startswith("parameters."):
                field = "env." + field.removeprefix("parameters.")
            return envelope_error(explain(exc, jobtype, parameters), 400, field)
        answer = {
            "status": STATUS_OK,
            "msg": "",
            "job_id": uuid.UUID(job.id).hex,
            "cluster_id": cluster_id(job.native_id),
        }
        if key is not None:
            answer["monitor_key"] = key
        return JSONResponse(answer)

    @router.get("/monitor/complete", openapi_extra=OCPS_ID)
    async def monitor_complete(request: Request) -> Response:
        """Release a job waiting for its data: ``id`` is the job's secret ``monitor_key``.

        Answers ``{"status": "ok", "msg": "", "cluster_id"}`` (the cluster id once the engine
        has started the job, waiting at most a moment). A second call changes nothing and says
        ``"msg": "already released"``; an unknown key is ``status: "error"``.
        """
        key = request.query_params.get("id")
        if not key:
            raise ValidationError("Missing argument id", field="id")
        data: DataTriggers | None = request.app.state.jobmill.data
        outcome = await run_in_threadpool(data.release_by_key, key) if data else None
        if outcome is None or data is None:
            return JSONResponse({"status": STATUS_ERROR, "msg": "Unknown key", "cluster_id": None})
        job = outcome.job
        if outcome.released:
            job = await _started(data, job)
            msg = ""
        else:
            stored = await run_in_threadpool(data.condition, job.id)
            msg = (
                "already released"
                if stored is not None and stored.released_at is not None
                else f"not waiting for data (phase {job.phase.value.lower()})"
            )
        answer = {"status": STATUS_OK, "msg": msg, "cluster_id": cluster_id(job.native_id)}
        return JSONResponse(answer)

    @router.get("/job", openapi_extra=OCPS_ID)
    def get_job(request: Request, jobs: ServiceDep, user: UserDep) -> Response:
        """A job's state in HTCondor words; ``Job not found`` is HTTP 200 with status error."""
        job_id = request.query_params.get("id")
        if job_id is None:
            raise ValidationError("Missing argument id", field="id")
        try:
            job = jobs.get(user, job_id)
        except NotFound:
            return JSONResponse({"status": STATUS_ERROR, "msg": "Job not found", "job": {}})
        return JSONResponse({"status": STATUS_OK, "msg": "", "job": job_dict(job)})

    @router.get("/schema/all")
    def all_schemas(jobs: ServiceDep, _user: UserDep) -> Response:
        """Every job type's schema."""
        return JSONResponse([schema_dict(jt) for _, jt in sorted(jobs.jobtypes.items())])

    @router.get("/schema/{job_type}", responses=ocps_errors(404))
    def one_schema(job_type: str, jobs: ServiceDep, _user: UserDep) -> Response:
        """One job type's schema: its name and the environment variables it takes."""
        jobtype = jobs.jobtypes.get(job_type)
        if jobtype is None:
            raise NotFound(f"Invalid job type: no job type '{job_type}'", field="job_type")
        return JSONResponse(schema_dict(jobtype))

    return router
