"""The IVOA UWS 1.1 face: one job list per job type at ``/uws/{job_type}``; see docs/uws.md.

A thin translation of UWS requests into ``JobService`` calls; ``uws_xml`` renders the answers:
XML for the job list, the job, its parameters and results, text for single values, 303 See Other
after every change. Errors are plain text: 400 for a malformed or invalid value, 403 for a
request the job's phase does not allow, 404 for an unknown job type, job or resource.

Names of job-control parameters (``PHASE``, ``RUNID``, ``EXECUTIONDURATION``, ``DESTRUCTION``,
``ACTION``, ``WAIT``, ``LAST``, ``AFTER``) and the values of ``PHASE`` and ``ACTION`` are
case-insensitive. Other names match the job type's declared parameters case-insensitively;
undeclared ones (TAP clients send ``REQUEST``, ``LANG``, ``QUERY``) are kept and listed but never
reach the process, unless the job type sets ``reject_unknown_parameters``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from jobmill.api import pipelinejobs
from jobmill.api import uws_xml as xml
from jobmill.api.auth import current_user
from jobmill.api.download import send_file
from jobmill.api.responses import (
    SEE_OTHER,
    TEXT_OK,
    UWS_JOB_QUERY,
    UWS_LIST_QUERY,
    UWS_TEXT_BODY,
    XML_OK,
    query,
    uws_errors,
    uws_form,
)
from jobmill.domain.errors import (
    Conflict,
    InsufficientStorage,
    JobmillError,
    NotFound,
    ValidationError,
)
from jobmill.domain.jobs import Job, JobFilter, iso, parse_job_id
from jobmill.domain.jobtypes import NAME_RE, JobType
from jobmill.domain.lifecycle import TERMINAL, Phase
from jobmill.service.feed import ChangeFeed
from jobmill.service.jobs import JobRequest, JobService, User
from jobmill.service.provenance import (
    MEDIA_TYPES,
    UWS_RESULTS,
    ProvenanceService,
    parse_depth,
    parse_reference,
    uws_provenance_results,
)
from jobmill.service.results import list_results
from jobmill.service.space import disk_full

CONTROL = frozenset(
    {"PHASE", "RUNID", "EXECUTIONDURATION", "DESTRUCTION", "ACTION", "WAIT", "LAST", "AFTER"}
)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
WAITABLE = frozenset({Phase.PENDING, Phase.QUEUED, Phase.EXECUTING})
LISTED = tuple(p for p in Phase if p is not Phase.ARCHIVED)
MAX_LIST = 1000
MAX_FIELDS = 1000
MAX_FILES = 100
T = TypeVar("T")


class UwsRoute(APIRoute):
    """Renders every error of a UWS route as plain text with the UWS status codes."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def uws_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except JobmillError as exc:
                return xml.error_response(exc)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                return xml.text(f"invalid request: {first.get('msg', 'bad input')}", 400)
            except HTTPException as exc:  # a malformed form body
                return xml.text(str(exc.detail), exc.status_code)

        return uws_handler


router = APIRouter(
    prefix="/uws",
    tags=["uws"],
    route_class=UwsRoute,
    default_response_class=Response,
    responses=uws_errors(400, 401, 403, 404, 413),
)


@dataclass
class Ctx:
    """What a UWS handler works with: the request, the service, the caller."""

    request: Request
    jobs: JobService
    user: User

    @property
    def feed(self) -> ChangeFeed:
        feed: ChangeFeed = self.request.app.state.feed
        return feed

    @property
    def base_url(self) -> str:
        """The server's URL, from ``JOBMILL_PUBLIC_URL`` or the request's own base."""
        public = self.request.app.state.jobmill.settings.public_url
        return str(public or self.request.base_url).rstrip("/")

    def list_url(self, job_type: str) -> str:
        """A job list's absolute URL."""
        return f"{self.base_url}/uws/{xml.segment(job_type)}"

    def job_url(self, job: Job) -> str:
        return f"{self.list_url(job.type)}/{job.id}"

    def provenance_links(self, job: Job) -> list[xml.Link]:
        """A finished job's provenance documents, listed as extra results (as OPUS does)."""
        if job.phase not in TERMINAL:
            return []
        return [
            xml.Link(name, url, media)
            for name, (url, media) in uws_provenance_results(self.base_url, job.id).items()
        ]

    @property
    def provenance(self) -> ProvenanceService:
        return ProvenanceService(self.jobs, self.base_url)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a (blocking) service call in a worker thread."""
        return await run_in_threadpool(fn, *args)


async def context(request: Request, user: Annotated[User, Depends(current_user)]) -> Ctx:
    return Ctx(request, request.app.state.jobmill.jobs, user)


CtxDep = Annotated[Ctx, Depends(context)]


def find_job(job_type: str, job_id: str, ctx: CtxDep) -> Job:
    """The caller's job in this job list; 404 for another type, another owner, or none."""
    ctx.jobs.jobtype(job_type)
    job = ctx.jobs.get(ctx.user, job_id)
    if job.type != job_type:
        raise NotFound(f"no job {job_id} in the job list '{job_type}'", field="id")
    return job


JobDep = Annotated[Job, Depends(find_job)]


# -- request arguments --------------------------------------------------------------------------


def parameter_name(jobtype: JobType, name: str) -> str:
    """The declared parameter ``name`` means (matched case-insensitively), or ``name`` itself."""
    if name in jobtype.parameters:
        return name
    matches = [p for p in jobtype.parameters if p.lower() == name.lower()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValidationError(f"'{name}' matches several parameters: {', '.join(matches)}")
    if not NAME_RE.match(name):
        raise ValidationError(
            f"'{xml.clean(name)}' is not a valid parameter name (letters, digits, _.-)",
            field="parameters",
        )
    return name


def _no_nul(name: str, value: str) -> str:
    if "\x00" in value:
        raise ValidationError(f"{name}: contains a NUL character", field=name)
    return value


@dataclass
class Form:
    """A POST's arguments: control parameters (upper-case names), values and uploaded files."""

    control: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadFile] = field(default_factory=dict)


async def _items(request: Request, *, query: bool) -> list[tuple[str, str | UploadFile]]:
    items: list[tuple[str, str | UploadFile]] = []
    if query:
        items.extend(request.query_params.multi_items())
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in FORM_TYPES:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS)
        items.extend(form.multi_items())
    elif (await request.body()).strip():
        raise ValidationError(
            f"the body must be a form ({' or '.join(FORM_TYPES)}), not '{content_type}'",
            field="body",
        )
    return items


async def read_form(request: Request, jobtype: JobType, *, query: bool = False) -> Form:
    form = Form()
    seen: set[str] = set()
    for name, value in await _items(request, query=query):
        upper = name.upper()
        if upper in CONTROL:
            if not isinstance(value, str):
                raise ValidationError(f"{upper} must be a value, not a file", field=upper)
            if upper in form.control:
                raise ValidationError(f"{upper} is given more than once", field=upper)
            form.control[upper] = value
            continue
        key = parameter_name(jobtype, name)
        if key.lower() in seen:
            raise ValidationError(f"parameter '{key}' is given more than once", field=key)
        seen.add(key.lower())
        if isinstance(value, str):
            form.values[key] = _no_nul(key, value)
        else:
            form.files[key] = value
    return form


def query_args(request: Request, names: Iterable[str]) -> dict[str, list[str]]:
    """Query arguments among ``names``, matched case-insensitively."""
    wanted = set(names)
    found: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        if name.upper() in wanted:
            found.setdefault(name.upper(), []).append(value)
    return found


def _single(args: Mapping[str, list[str]], name: str) -> str | None:
    values = args.get(name, [])
    if len(values) > 1:
        raise ValidationError(f"{name} is given more than once", field=name)
    return values[0] if values else None


@dataclass
class Control:
    """The parsed job-control parameters of a POST (WAIT, LAST, AFTER are ignored there)."""

    phase: str | None = None  # RUN or ABORT
    run_id: str | None = None
    duration: int | None = None
    destruction: datetime | None = None


def parse_control(values: Mapping[str, str]) -> Control:
    """Every control value checked before anything changes."""
    control = Control(run_id=values.get("RUNID"))
    if "PHASE" in values:
        control.phase = values["PHASE"].strip().upper()
        if control.phase not in ("RUN", "ABORT"):
            message = f"PHASE: '{xml.clean(values['PHASE'])}' is not RUN or ABORT"
            raise ValidationError(message, field="PHASE")
    if "EXECUTIONDURATION" in values:
        control.duration = xml.parse_int(values["EXECUTIONDURATION"], "EXECUTIONDURATION")
    if "DESTRUCTION" in values:
        control.destruction = xml.parse_instant(values["DESTRUCTION"], "DESTRUCTION")
    return control


# -- the index and the job lists ----------------------------------------------------------------


@router.get("", responses=XML_OK)
def index(ctx: CtxDep) -> Response:
    """The job lists (one per job type) with their URLs, parameters and results."""
    jobtypes = sorted(ctx.jobs.jobtypes.values(), key=lambda jobtype: jobtype.name)
    return xml.document(xml.job_lists((jt, ctx.list_url(jt.name)) for jt in jobtypes))


@router.get("/{job_type}", responses=XML_OK, openapi_extra=UWS_LIST_QUERY)
@router.get("/{job_type}/async", include_in_schema=False)  # where TAP clients look for it
def list_jobs(job_type: str, ctx: CtxDep) -> Response:
    """The job list, newest first: ``PHASE`` (repeatable), ``AFTER``, ``LAST``, combined with
    AND; no ARCHIVED jobs unless ``PHASE=ARCHIVED`` asks for them; at most 1000 jobs."""
    ctx.jobs.jobtype(job_type)
    args = query_args(ctx.request, ("PHASE", "AFTER", "LAST"))
    after = _single(args, "AFTER")
    last = _single(args, "LAST")
    limit = xml.parse_int(last, "LAST") if last is not None else MAX_LIST
    if limit < 1:
        raise ValidationError("LAST must be a positive integer", field="LAST")
    flt = JobFilter(
        phases=[xml.parse_phase(v) for v in args.get("PHASE", [])] or LISTED,
        type=job_type,
        created_after=xml.created_after(after) if after is not None else None,
    )
    refs = ctx.jobs.list_refs(ctx.user, flt, limit=min(limit, MAX_LIST))
    return xml.document(xml.job_list(refs, ctx.list_url(job_type)))


@router.post(
    "/{job_type}",
    status_code=303,
    responses=SEE_OTHER | uws_errors(507),
    openapi_extra=uws_form("PHASE", "RUNID", "EXECUTIONDURATION", "DESTRUCTION"),
)
@router.post("/{job_type}/async", include_in_schema=False)
async def create_job(job_type: str, ctx: CtxDep) -> Response:
    """Create a job from form or multipart parameters (files are uploads); ``PHASE=RUN`` starts
    it; ``RUNID``, ``EXECUTIONDURATION``, ``DESTRUCTION`` set its control values. 303 to it."""
    jobtype = ctx.jobs.jobtype(job_type)
    form = await read_form(ctx.request, jobtype, query=True)
    if "ACTION" in form.control:
        raise ValidationError("ACTION is for an existing job", field="ACTION")
    control = parse_control(form.control)
    if control.phase == "ABORT":
        raise ValidationError("PHASE at creation can only be RUN", field="PHASE")
    parameters: dict[str, Any] = dict(form.values)
    parameters.update({name: xml.upload_value(name) for name in form.files})
    request = JobRequest(
        type=jobtype.name,
        parameters=parameters,
        run_id=control.run_id,
        execution_duration=control.duration,
        start=control.phase == "RUN" and not form.files and control.destruction is None,
        allow_unknown=True,
    )
    job = await ctx.call(_create, ctx, request, form.files, control)
    return xml.see_other(ctx.job_url(job))


def _create(
    ctx: Ctx, request: JobRequest, files: Mapping[str, UploadFile], control: Control
) -> Job:
    """Create; then set the destruction time, save uploads, run, as asked. All or nothing."""
    job = ctx.jobs.create(ctx.user, request)
    if request.start or (not files and control.destruction is None and control.phase is None):
        return job
    try:
        if control.destruction is not None:
            job = ctx.jobs.set_destruction(ctx.user, job.id, control.destruction)
        for part, final in _stage(ctx.jobs.files.workdir(job.id), files):
            part.replace(final)
        if control.phase == "RUN":
            job = ctx.jobs.run(ctx.user, job.id)
    except BaseException:
        ctx.jobs.delete(ctx.user, job.id)
        raise
    return job


def _stage(workdir: Path, files: Mapping[str, UploadFile]) -> list[tuple[Path, Path]]:
    """Write uploads beside their final names, as ``uploads/.<name>.part``."""
    staged = []
    for name, upload in files.items():
        target = workdir / xml.UPLOADS
        target.mkdir(parents=True, exist_ok=True)
        part = target / f".{name}.part"
        try:
            with open(part, "wb") as out:
                upload.file.seek(0)
                shutil.copyfileobj(upload.file, out)
        except OSError as exc:
            if disk_full(exc):
                part.unlink(missing_ok=True)
                raise InsufficientStorage(
                    f"no room for the upload '{name}': the server's disk is full"
                ) from None
            raise
        staged.append((part, target / name))
    return staged


# -- one job ------------------------------------------------------------------------------------


def _job_document(ctx: Ctx, job: Job) -> bytes:
    ctx.jobs.with_links([job])  # jobInfo names its parent, dependencies and sub-jobs
    url = ctx.job_url(job)
    files = ctx.jobs.files
    view = xml.JobView(
        job=job,
        url=url,
        parameters=xml.parameters_of(files, job, url),
        results=list_results(files, ctx.jobs.jobtypes.get(job.type), job),
        error=xml.error_info(job),
        links=ctx.provenance_links(job),
        pipeline=pipelinejobs.job_info(ctx.request, job.id),
    )
    return xml.job_document(view)


@router.get("/{job_type}/{job_id}", responses=XML_OK, openapi_extra=UWS_JOB_QUERY)
async def get_job(job_type: str, job_id: str, ctx: CtxDep) -> Response:
    """The job. ``WAIT=n`` blocks while the job is PENDING, QUEUED or EXECUTING until its phase
    changes, at most ``n`` seconds (``-1``: the server's maximum, ``JOBMILL_MAX_WAIT``); with
    ``PHASE=p``, only while the job is in ``p``. A waiting request holds no thread."""
    args = query_args(ctx.request, ("WAIT", "PHASE"))
    wait_arg, phase_arg = _single(args, "WAIT"), _single(args, "PHASE")
    cap = ctx.request.app.state.jobmill.settings.max_wait
    wait = xml.wait_seconds(wait_arg, cap) if wait_arg is not None else 0.0
    guard = xml.parse_phase(phase_arg) if phase_arg is not None else None
    if wait > 0:
        job = await ctx.call(find_job, job_type, job_id, ctx)
        if job.phase not in WAITABLE or guard not in (None, job.phase):
            return xml.document(await ctx.call(_job_document, ctx, job))
        await ctx.feed.wait(job.id, job.phase, wait)
    # Read (again, after a wait) and render in one worker-thread call; 404 if it is gone.
    return xml.document(await ctx.call(_document_of, ctx, job_type, job_id))


def _document_of(ctx: Ctx, job_type: str, job_id: str) -> bytes:
    return _job_document(ctx, find_job(job_type, job_id, ctx))


@router.post(
    "/{job_type}/{job_id}",
    status_code=303,
    responses=SEE_OTHER,
    openapi_extra=uws_form("ACTION", "PHASE", "RUNID", "EXECUTIONDURATION", "DESTRUCTION"),
)
@router.post(
    "/{job_type}/{job_id}/parameters",
    status_code=303,
    responses=SEE_OTHER,
    openapi_extra=uws_form("RUNID", "EXECUTIONDURATION", "DESTRUCTION"),
)
async def post_job(job: JobDep, ctx: CtxDep) -> Response:
    """``ACTION=DELETE`` (303 to the list); or parameter values and ``RUNID`` (PENDING only,
    files are uploads), ``EXECUTIONDURATION``, ``DESTRUCTION``, ``PHASE=RUN|ABORT`` (303 to the
    job)."""
    form = await read_form(ctx.request, ctx.jobs.jobtype(job.type))
    if "ACTION" in form.control:
        if form.control["ACTION"].strip().upper() != "DELETE":
            raise ValidationError("ACTION can only be DELETE", field="ACTION")
        return await delete_job(job, ctx)
    control = parse_control(form.control)
    await ctx.call(_apply, ctx, job, form, control)
    return xml.see_other(ctx.job_url(job))


@router.delete("/{job_type}/{job_id}", status_code=303, responses=SEE_OTHER)
async def delete_job(job: JobDep, ctx: CtxDep) -> Response:
    """Delete the job (a running one is aborted first); 303 to the job list."""
    await ctx.call(ctx.jobs.delete, ctx.user, job.id)
    ctx.feed.notify(job.id)
    return xml.see_other(ctx.list_url(job.type))


def _apply(ctx: Ctx, job: Job, form: Form, control: Control) -> None:
    if form.values or form.files:
        _set_parameters(ctx, job, form.values, form.files)
    if control.run_id is not None:
        ctx.jobs.set_run_id(ctx.user, job.id, control.run_id)
    if control.duration is not None:
        ctx.jobs.set_execution_duration(ctx.user, job.id, control.duration)
    if control.destruction is not None:
        ctx.jobs.set_destruction(ctx.user, job.id, control.destruction)
    if control.phase == "RUN":
        ctx.jobs.run(ctx.user, job.id)
    elif control.phase == "ABORT":
        ctx.jobs.abort(ctx.user, job.id)
    if control.phase:
        ctx.feed.notify(job.id)


def _set_parameters(
    ctx: Ctx, job: Job, values: Mapping[str, str], files: Mapping[str, UploadFile]
) -> None:
    """Change parameters of a PENDING job; uploads take their place only if the change holds."""
    if files and job.phase is not Phase.PENDING:
        raise Conflict(f"parameters can only change while the job is PENDING (it is {job.phase})")
    staged = _stage(ctx.jobs.files.workdir(job.id), files)
    changes = {**values, **{name: xml.upload_value(name) for name in files}}
    try:
        ctx.jobs.update_parameters(ctx.user, job.id, changes)
    except BaseException:
        for part, _final in staged:
            part.unlink(missing_ok=True)
        raise
    for part, final in staged:
        part.replace(final)


# -- the job's single values --------------------------------------------------------------------


def _value(path: str, render: Callable[[Job], str], control: str | None = None) -> None:
    """``GET /{path}`` (text) and, with ``control``, ``POST {control}=...`` (303 to the job)."""

    def get_value(job: JobDep) -> Response:
        return xml.text(render(job))

    async def post_value(job: JobDep, ctx: CtxDep) -> Response:
        form = await read_form(ctx.request, ctx.jobs.jobtype(job.type))
        if control not in form.control:
            raise ValidationError(f"{control} is missing", field=control)
        await ctx.call(_apply, ctx, job, Form(), parse_control({control: form.control[control]}))
        return xml.see_other(ctx.job_url(job))

    url = f"/{{job_type}}/{{job_id}}/{path}"
    get_value.__name__, get_value.__doc__ = f"get_{path}", f"The job's {path} (text)."
    router.add_api_route(url, get_value, methods=["GET"], responses=TEXT_OK)
    if control is not None:
        post_value.__name__, post_value.__doc__ = f"post_{path}", f"{control}=...; 303 to the job."
        router.add_api_route(
            url,
            post_value,
            methods=["POST"],
            status_code=303,
            responses=SEE_OTHER,
            openapi_extra=uws_form(control, parameters=False),
        )


_value("phase", lambda job: job.phase.value, "PHASE")
_value("executionduration", lambda job: str(job.execution_duration), "EXECUTIONDURATION")
_value("destruction", lambda job: iso(job.destruction_at) or "", "DESTRUCTION")
_value("quote", lambda job: "")  # jobmill makes no estimates: unknown
_value("owner", lambda job: xml.clean(job.owner))


@router.get("/{job_type}/{job_id}/error", responses=TEXT_OK)
def get_error(job: JobDep, ctx: CtxDep) -> Response:
    """The error as text (message, exit code, end of stderr); empty when there is none."""
    return xml.text(xml.error_text(ctx.jobs.files, job))


@router.get("/{job_type}/{job_id}/stdout", responses=TEXT_OK)
@router.get("/{job_type}/{job_id}/stderr", responses=TEXT_OK)
def get_log(job: JobDep, ctx: CtxDep) -> Response:
    """The job's whole stdout or stderr as text (as long as it was when asked: a running job's
    log grows), streamed; ``X-Log-Size`` says how many bytes that is."""
    stream = ctx.request.url.path.rsplit("/", 1)[1]
    opened = ctx.jobs.files.open_log(job, stream)
    if opened is None:
        return Response(b"", media_type=xml.TEXT, headers={"X-Log-Size": "0"})
    handle, size = opened
    return send_file(handle, xml.TEXT, size=size, headers={"X-Log-Size": str(size)})


# -- parameters and results ---------------------------------------------------------------------


@router.get("/{job_type}/{job_id}/parameters", responses=XML_OK)
def get_parameters(job: JobDep, ctx: CtxDep) -> Response:
    parameters = xml.parameters_of(ctx.jobs.files, job, ctx.job_url(job))
    return xml.document(xml.parameters_document(parameters))


@router.get("/{job_type}/{job_id}/parameters/{name}")
def get_parameter(name: str, job: JobDep, ctx: CtxDep) -> Response:
    """One parameter's value as text (name matched case-insensitively), or the uploaded file."""
    values = {**job.extra_parameters, **job.parameters}
    key = name if name in values else next((k for k in values if k.lower() == name.lower()), None)
    if key is None:
        raise NotFound(f"job {job.id} has no parameter '{xml.clean(name)}'", field="name")
    upload = xml.upload_path(ctx.jobs.files, job, key)
    handle = ctx.jobs.files.open_file(job, upload, f"upload '{key}'") if upload else None
    if handle is not None:
        return send_file(handle, "application/octet-stream", filename=key)
    return xml.text(xml.value_text(values[key]))


@router.put(
    "/{job_type}/{job_id}/parameters/{name}",
    status_code=303,
    responses=SEE_OTHER,
    openapi_extra=UWS_TEXT_BODY,
)
async def put_parameter(name: str, job: JobDep, ctx: CtxDep) -> Response:
    """Set one parameter of a PENDING job to the request body (text); 303 to the job."""
    try:
        value = (await ctx.request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("the value must be UTF-8 text", field=name) from None
    return await _set_one(ctx, job, name, _no_nul(name, value), None)


@router.post(
    "/{job_type}/{job_id}/parameters/{name}",
    status_code=303,
    responses=SEE_OTHER,
    openapi_extra=uws_form("VALUE", parameters=False),
)
async def post_parameter(name: str, job: JobDep, ctx: CtxDep) -> Response:
    """Set one parameter (as OPUS does): ``VALUE=...``, or a file in a multipart body."""
    value: str | None = None
    upload: UploadFile | None = None
    for key, item in await _items(ctx.request, query=False):
        if isinstance(item, UploadFile):
            upload = item
        elif key.upper() == "VALUE":
            value = _no_nul(name, item)
    if value is None and upload is None:
        raise ValidationError("VALUE is missing", field="VALUE")
    return await _set_one(ctx, job, name, value, upload)


async def _set_one(
    ctx: Ctx, job: Job, name: str, value: str | None, upload: UploadFile | None
) -> Response:
    key = parameter_name(ctx.jobs.jobtype(job.type), name)
    values = {key: value} if upload is None and value is not None else {}
    files = {key: upload} if upload is not None else {}
    await ctx.call(_set_parameters, ctx, job, values, files)
    return xml.see_other(ctx.job_url(job))


@router.get("/{job_type}/{job_id}/results", responses=XML_OK)
def get_results(job: JobDep, ctx: CtxDep) -> Response:
    results = list_results(ctx.jobs.files, ctx.jobs.jobtypes.get(job.type), job)
    links = ctx.provenance_links(job)
    return xml.document(xml.results_document(results, ctx.job_url(job), links))


@router.get("/{job_type}/{job_id}/results/{result_id:path}")
def get_result(result_id: str, job: JobDep, ctx: CtxDep) -> Response:
    """Download one result file (403 for one a symbolic link leads to)."""
    result, handle = ctx.jobs.open_result(ctx.user, job.id, result_id)
    return send_file(handle, result.content_type, filename=result.path.name)


# -- provenance (OPUS's URLs) -------------------------------------------------------------------


def _provenance_ok(*formats: str) -> dict[int | str, dict[str, Any]]:
    media: dict[str, Any] = {MEDIA_TYPES[fmt].split(";")[0]: {} for fmt in formats}
    return {200: {"description": "the provenance document", "content": media}}


def _provenance_alias(path: str, fmt: str) -> None:
    """``GET /{job_type}/{job_id}/{path}``: the job's provenance in ``fmt``, as OPUS serves it
    (``DEPTH=n|ALL`` follows used results back through the jobs that made them)."""

    async def get_provenance(job: JobDep, ctx: CtxDep) -> Response:
        depth = parse_depth(_single(query_args(ctx.request, ("DEPTH",)), "DEPTH"))
        rendered = await ctx.call(ctx.provenance.render, ctx.user, job.id, fmt, depth)
        return Response(rendered.body, media_type=rendered.media_type)

    get_provenance.__name__ = f"get_{path}"
    get_provenance.__doc__ = f"The finished job's provenance ({fmt}; 403 before it ends)."
    router.add_api_route(
        f"/{{job_type}}/{{job_id}}/{path}",
        get_provenance,
        methods=["GET"],
        responses=_provenance_ok(fmt),
        openapi_extra=query(DEPTH={"type": "string"}),
    )


for _path, _fmt in {**UWS_RESULTS, "provn": "provn"}.items():
    _provenance_alias(_path, _fmt)


provsap_router = APIRouter(
    tags=["uws"],
    route_class=UwsRoute,
    default_response_class=Response,
    responses=uws_errors(400, 401, 403),
)
SAP_FORMATS = {"PROV-JSON": "json", "PROV-XML": "xml", "PROV-N": "provn", "PROV-SVG": "svg"}
SAP_IGNORED = ("MODEL", "AGENTS", "MEMBERS", "DESCRIPTIONS", "CONFIGURATION", "ATTRIBUTES")


@provsap_router.get(
    "/provsap",
    responses=_provenance_ok(*SAP_FORMATS.values()),
    openapi_extra=query(
        ID={"type": "string"},
        DEPTH={"type": "string"},
        DIRECTION={"type": "string"},
        RESPONSEFORMAT={"type": "string"},
    ),
)
async def provsap(ctx: CtxDep) -> Response:
    """OPUS's ProvSAP: ``ID`` (a job id, a job's URL or one of its results' URLs),
    ``DEPTH=n|ALL`` (default 1), ``DIRECTION=BACK`` (the only one), ``RESPONSEFORMAT``
    ``PROV-SVG`` (default), ``PROV-JSON``, ``PROV-XML`` or ``PROV-N``. ``MODEL``, ``AGENTS``,
    ``MEMBERS``, ``DESCRIPTIONS``, ``CONFIGURATION`` and ``ATTRIBUTES`` are accepted and have
    no effect."""
    args = query_args(ctx.request, ("ID", "DEPTH", "DIRECTION", "RESPONSEFORMAT", *SAP_IGNORED))
    ids = args.get("ID", [])
    if len(ids) != 1:
        raise ValidationError("give one ID (a job id or a result's URL)", field="ID")
    direction = (_single(args, "DIRECTION") or "BACK").strip().upper()
    if direction != "BACK":
        raise ValidationError(
            f"'{xml.clean(direction)}' is not supported: jobmill follows provenance BACK only",
            field="DIRECTION",
        )
    wanted = (_single(args, "RESPONSEFORMAT") or "PROV-SVG").strip().upper()
    fmt = SAP_FORMATS.get(wanted) or SAP_FORMATS.get(f"PROV-{wanted}")
    if fmt is None:
        raise ValidationError(
            f"'{xml.clean(wanted)}' is not one of {', '.join(SAP_FORMATS)}",
            field="RESPONSEFORMAT",
        )
    depth = parse_depth(_single(args, "DEPTH"))
    job_id = sap_job_id(ids[0], ctx)
    try:
        rendered = await ctx.call(ctx.provenance.render, ctx.user, job_id, fmt, depth)
    except NotFound:  # a query value, not a resource of its own: 400, as for any bad value
        raise ValidationError(f"no job {job_id} (or not yours)", field="ID") from None
    return Response(rendered.body, media_type=rendered.media_type)


def sap_job_id(value: str, ctx: Ctx) -> str:
    """The job a ProvSAP ``ID`` names: its id, its URL (UWS or native), or a result's URL."""
    text = value.strip()
    found = parse_job_id(text)
    if found is None:
        reference = parse_reference(text, ctx.jobs.files.root)
        found = reference.job_id if reference else None
    if found is None:
        parts = urlsplit(text).path.split("/")  # /uws/<type>/<id>/..., /api/v1/jobs/<id>
        found = next((job_id for job_id in map(parse_job_id, parts) if job_id), None)
    if found is None:
        raise ValidationError(f"'{xml.clean(text[:200])}' names no job", field="ID")
    return found
