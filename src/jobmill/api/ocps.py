"""The OCPS Job Manager protocol (Rubin's prototype API): a thin face over ``JobService``.

Routes, under the configurable base path (``API_BASEPATH``, default ``/api/v1``):

* ``POST {base}/job``: ``type``, ``env`` (an object of environment variables) and ``log_dir``,
  as JSON or form-encoded; answers ``{"status", "msg", "job_id" (32 hex), "cluster_id"}``.
* ``GET {base}/job?id=<job_id>``: ``{"status", "msg", "job": {"clusterId", "state", ...}}``;
  an unknown id is ``status: "error"``, ``msg: "Job not found"`` with HTTP 200 (clients key on
  ``status``).
* ``GET {base}/schema/all`` and ``GET {base}/schema/{job_type}`` (from the draft OpenAPI spec).
* ``GET {base}/monitor/complete?id=<key>``: releases a job waiting for its ``<job_id>.dat``; the
  key is the ``monitor_key`` the submission answered with (see ``docs/triggers.md``), or, with
  ``JOBMILL_OCPS_MONITOR_JOB_ID``, the job id as the prototype's ``monitor.py`` sends it.
* ``PUT {base}/job``: the successor service's submission (``command``, ``run_id``,
  ``environment``, ``url``, ``commit_ref``), run by the job type ``JOBMILL_OCPS_COMMAND_TYPE``;
  or the draft spec's (``type``, ``env`` as a list), as ``POST``. ``GET {base}/job/{id}`` and
  ``GET {base}/job/{id}/phase``: the successor's job object and phase; ``DELETE
  {base}/job/{id}``: abort and remove the job (the draft's and the successor's).
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
from jobmill.api.responses import OCPS_ID, OCPS_PUT, OCPS_SUBMIT, TEXT, ocps_errors
from jobmill.domain.conditions import DataCondition
from jobmill.domain.errors import (
    Conflict,
    Forbidden,
    JobmillError,
    NotFound,
    ValidationError,
    http_status,
)
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
    Phase.ERROR: "error",
    Phase.ABORTED: "removed",
    Phase.HELD: "held",
    Phase.SUSPENDED: "suspended",
    Phase.UNKNOWN: "unknown",
    Phase.ARCHIVED: "completed",
}
"""UWS phase -> the HTCondor-like state names OCPS clients know. A failure is ``error`` (the
successor service's word), never ``completed``; an archived job says how it had ended."""


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
    if job.phase is Phase.ARCHIVED:  # ended earlier: the exit status tells how
        return "completed" if job.exit_code == 0 and not job.error else "error"
    return STATES[job.phase]


def cluster_id(native_id: str | None) -> int | str | None:
    """The integer HTCondor calls a cluster id: a local pid (``pid@start``), a batch job number
    (``123`` or ``123.0``), or the native id itself when it has no such number."""
    if not native_id:
        return None
    head = native_id.partition("@")[0].partition(".")[0]
    return int(head) if head.isdigit() else native_id


def canonical_id(value: str) -> str | None:
    """A job id given as 32 hex digits (or dashed) in jobmill's form; None if it is not one."""
    try:
        return str(uuid.UUID(value)) if len(value) in (32, 36) else None
    except ValueError:
        return None


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


def uws_phase(job: Job) -> str:
    """The successor service's lower-case phase (an archived job says how it had ended)."""
    if job.phase is Phase.ARCHIVED:
        return "completed" if job.exit_code == 0 and not job.error else "error"
    return job.phase.value.lower()


def job_object(job: Job) -> dict[str, Any]:
    """The successor service's job object (``PUT {base}/job``, ``GET {base}/job/{id}``)."""
    parameters = dict(job.parameters)
    environment = parameters.get("environment")
    if isinstance(environment, str):
        try:
            parameters["environment"] = json.loads(environment)
        except ValueError:
            pass
    ended = job.ended_at if job.terminal else None
    return {
        "jobId": uuid.UUID(job.id).hex,
        "runId": job.run_id,
        "ownerId": job.owner,
        "phase": uws_phase(job),
        "creationTime": iso(job.created_at),
        "startTime": iso(job.started_at),
        "endTime": iso(ended),
        "executionDuration": job.execution_duration,
        "destruction": iso(job.destruction_at),
        "parameters": parameters,
        "results": [],
        "errorSummary": {"message": job.error or ""},
        "jobInfo": {
            "type": job.type,
            "clusterId": cluster_id(job.native_id),
            "exitCode": job.exit_code,
        },
    }


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


COMMAND_KEYS = ("command", "run_id", "environment", "url", "commit_ref", "replicas")


def command_request(command_type: str, args: Mapping[str, Any]) -> JobRequest:
    """A successor ``PUT /job`` as a job of the command job type: its parameters ``command``,
    ``environment`` (the list as JSON text), ``url`` and ``commit_ref`` (those given)."""
    unknown = sorted(set(args) - set(COMMAND_KEYS))
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]}", field=unknown[0])
    command = args["command"]
    if not isinstance(command, str) or not command.strip():
        raise ValidationError("command must be a non-empty string", field="command")
    if args.get("replicas", 1) != 1:
        raise ValidationError("only one replica is run (replicas: 1)", field="replicas")
    run_id = args.get("run_id")
    if run_id is not None and not isinstance(run_id, str):
        raise ValidationError("run_id must be a string", field="run_id")
    parameters: dict[str, Any] = {"command": command}
    if "environment" in args:
        environment = args["environment"]
        if not isinstance(environment, list) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) for e in environment
        ):
            raise ValidationError(
                'environment must be a list of {"name", "value"}', field="environment"
            )
        parameters["environment"] = json.dumps(
            [{"name": e["name"], "value": str(e.get("value", ""))} for e in environment]
        )
    for key in ("url", "commit_ref"):
        if args.get(key) is not None:
            if not isinstance(args[key], str):
                raise ValidationError(f"{key} must be a string", field=key)
            parameters[key] = args[key]
    return JobRequest(type=command_type, parameters=parameters, run_id=run_id)


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


def waits_for_dat(request: Request, job_type: str, jobtype: JobType | None) -> bool:
    """Whether OCPS jobs of this type wait for their ``.dat``: by default those of a
    ``job_specs.yaml`` file, as in the prototype; ``JOBMILL_OCPS_WAIT_FOR_DAT`` overrides."""
    types: tuple[str, ...] | None = request.app.state.jobmill.settings.ocps_wait_for_dat
    if types is None:
        return jobtype is not None and jobtype.ocps_specs
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

    for path in ("/job", "/job/{job_id}", "/job/{job_id}/phase", "/schema/{job_type}",
                 "/monitor/complete"):  # fmt: skip
        router.add_api_route(
            path, _preflight, methods=["OPTIONS"], status_code=204, include_in_schema=False
        )

    @router.post("/job", responses=ocps_errors(507), openapi_extra=OCPS_SUBMIT)
    async def submit_job(request: Request, jobs: ServiceDep, user: UserDep) -> Response:
        """Submit a job: ``type``, ``env`` (object) and ``log_dir``; validated at once."""
        return await _submit(request, jobs, user, await request_args(request))

    @router.put("/job", responses=ocps_errors(403, 507), openapi_extra=OCPS_PUT)
    async def put_job(request: Request, jobs: ServiceDep, user: UserDep) -> Response:
        """The successor service's ``PUT /job`` (``command``, ``run_id``?, ``environment``?
        as ``[{"name", "value"}]``, ``url``?, ``commit_ref``?, ``replicas``? = 1), answered
        with its job object; or the draft spec's (``type``, ``env``), answered as ``POST``."""
        args = await request_args(request)
        if "command" not in args:
            return await _submit(request, jobs, user, args, log_dir_required=False)
        command_type = request.app.state.jobmill.settings.ocps_command_type
        if not command_type:
            raise ValidationError(
                "this server runs no commands: an administrator names the job type that runs "
                "them with JOBMILL_OCPS_COMMAND_TYPE (docs/ocps.md)",
                field="command",
            )
        if not user.admin:  # a command runs as the server's user: as defining a job type
            raise Forbidden("only an administrator can run commands", field="command")
        job_request = command_request(command_type, args)
        job = await run_in_threadpool(jobs.create, user, job_request)
        return JSONResponse(job_object(job))

    @router.get("/job/{job_id}", responses=ocps_errors(404))
    def get_job_object(job_id: str, jobs: ServiceDep, user: UserDep) -> Response:
        """The successor service's job object; an unknown id is a 404."""
        return JSONResponse(job_object(jobs.get(user, job_id)))

    @router.get(
        "/job/{job_id}/phase",
        response_class=Response,
        responses=ocps_errors(404) | {200: {"content": TEXT, "description": "the phase"}},
    )
    def get_job_phase(job_id: str, jobs: ServiceDep, user: UserDep) -> Response:
        """The job's lower-case UWS phase, as text (the successor's ``/job/{id}/phase``)."""
        return Response(uws_phase(jobs.get(user, job_id)), media_type="text/plain")

    @router.delete("/job/{job_id}", responses=ocps_errors(404))
    def delete_job(job_id: str, jobs: ServiceDep, user: UserDep) -> Response:
        """Abort the job if it has not ended, then remove it (its files too): the draft's and
        the successor's ``DELETE``. Answers the job object as it ended; 404 from then on."""
        job = jobs.get(user, job_id)
        if not job.terminal:
            try:
                job = jobs.abort(user, job.id)
            except Conflict:  # it ended meanwhile
                job = jobs.get(user, job.id)
        jobs.delete(user, job.id)
        return JSONResponse(job_object(job))

    async def _submit(
        request: Request,
        jobs: JobService,
        user: User,
        args: dict[str, Any],
        *,
        log_dir_required: bool = True,
    ) -> Response:
        job_type = required(args, "type")
        env = env_values(required(args, "env"))
        log_dir = required(args, "log_dir") if log_dir_required else args.get("log_dir")
        if not isinstance(job_type, str):
            raise ValidationError("Invalid job type: type must be a string", field="type")
        if log_dir is not None and not isinstance(log_dir, str):
            raise ValidationError("log_dir must be a directory path", field="log_dir")
        jobtype = jobs.jobtypes.get(job_type)
        parameters = to_parameters(jobtype, env)
        key = new_key() if waits_for_dat(request, job_type, jobtype) else None
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
        job_id = canonical_id(key)
        # JOBMILL_OCPS_MONITOR_JOB_ID: the prototype's monitor.py sends the job id as key
        allow_id = request.app.state.jobmill.settings.ocps_monitor_job_id
        if outcome is None and data is not None and job_id is not None and allow_id:
            outcome = await run_in_threadpool(data.release_by_job_id, job_id)
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
            if job_id.isascii() and job_id.isdigit() and len(job_id) <= 18:
                job = jobs.by_cluster_id(user, int(job_id))  # the earliest prototype client
            else:
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
