"""The web pages: server-rendered HTML over the services, like every face (docs/web.md).

Every page reads without JavaScript; the live parts (``live.py``) only add to what a page
already shows. Forms post back here (never to the JSON API), carry the session's CSRF token,
and answer 303 to the page to show next. An error is an HTML page with the service's status
and message; a refused job form is shown again with the message next to its field.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import fields as dataclass_fields
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.responses import RedirectResponse, Response

from jobmill.api.download import send_file
from jobmill.api.provenance import provenance_service
from jobmill.api.schemas import event_out, job_out
from jobmill.domain.arp import status_names
from jobmill.domain.errors import Forbidden, JobmillError, NotFound, ValidationError, http_status
from jobmill.domain.jobs import Job, JobFilter, JobRequest, parse_job_id
from jobmill.domain.lifecycle import Phase, Reason
from jobmill.domain.users import User
from jobmill.service.experiments import ExperimentService
from jobmill.service.jobs import JobService
from jobmill.service.rules import RuleEngine
from jobmill.web import forms
from jobmill.web.render import page
from jobmill.web.viewer import SignInNeeded, Viewer, reader, viewer, writer

PAGE_SIZE = 50
LOG_TAIL = 64 * 1024
GRID_RUNS = 20
WAITING_FOR_DATA = Reason.DATA.value


class HtmlRoute(APIRoute):
    """Answers a service error as an HTML page, and a page that needs a user with the sign-in
    form (303 for a browser)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def html_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInNeeded:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(
                    "/ui/signin?" + urlencode({"next": target}), status_code=303
                )
            except JobmillError as exc:
                return page(
                    "error.html", http_status(exc), error=exc, code=http_status(exc), who=None
                )

        return html_errors


router = APIRouter(route_class=HtmlRoute, include_in_schema=False)
ViewerDep = Annotated[Viewer, Depends(viewer)]


def _jobs(request: Request) -> JobService:
    jobs: JobService = request.app.state.jobmill.jobs
    return jobs


def _experiments(request: Request) -> ExperimentService:
    service: ExperimentService | None = request.app.state.jobmill.experiments
    if service is None:
        raise NotFound("experiments (ARP) are not enabled on this server", field="experiment")
    return service


def _rules(request: Request) -> RuleEngine | None:
    engine: RuleEngine | None = request.app.state.jobmill.rules
    return engine


async def read_form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _job_url(job_id: str) -> str:
    return f"/ui/jobs/{quote(job_id)}"


# -- the job list -----------------------------------------------------------------------------


FILTER_FIELDS = ("phase", "type", "owner", "tag", "id", "run")
HEX = frozenset("0123456789abcdef-")


def _supported(name: str) -> bool:
    """Whether this version's ``JobFilter`` has the field (tags and id prefixes are newer)."""
    return name in {f.name for f in dataclass_fields(JobFilter)}


def job_filter(params: Mapping[str, str]) -> tuple[JobFilter, dict[str, str]]:
    """The list's filter from its query (``phase``, ``type``, ``owner``, ``tag``, ``run``: a
    run id, ``id``: the start of a job id), and the filters as given (for the form)."""
    given = {k: params[k].strip() for k in FILTER_FIELDS if params.get(k, "").strip()}
    flt = JobFilter()
    if "phase" in given:
        try:
            flt.phases = [Phase(given["phase"].upper())]
        except ValueError:
            raise ValidationError(f"unknown phase '{given['phase']}'", field="phase") from None
    flt.type = given.get("type")
    flt.owner = given.get("owner")
    flt.run_id = given.get("run")
    for name, field in (("tag", "tag"), ("id", "id_prefix")):
        if name not in given:
            continue
        if not _supported(field):
            raise ValidationError(f"this server cannot filter by {name}", field=name)
        value = given[name]
        if name == "id":
            value = value.lower()
            if not set(value) <= HEX:
                raise ValidationError("a job id holds hex digits and dashes", field="id")
        setattr(flt, field, value)
    return flt, given


def list_jobs(
    jobs: JobService, user: User, params: Mapping[str, str], limit: int | None = None
) -> tuple[list[dict[str, Any]], str | None, dict[str, str]]:
    flt, given = job_filter(params)
    cursor = params.get("cursor") or None
    found = jobs.list(user, flt, limit=limit or PAGE_SIZE, cursor=cursor)
    return [job_out(j) for j in found.jobs], found.next_cursor, given


@router.get("/")
def home(request: Request, who: ViewerDep) -> Response:
    """The newest jobs, with filters and pages (keyset: ``cursor`` is a job's sequence)."""
    user = reader(who)
    params = dict(request.query_params)
    full_id = parse_job_id(params.get("id", ""))
    if full_id is not None:
        return _see_other(_job_url(full_id))
    jobs = _jobs(request)
    rows, next_cursor, given = list_jobs(jobs, user, params)
    live = "/ui/live/jobs?" + urlencode({**given, "cursor": params.get("cursor", "")})
    return page(
        "jobs.html",
        who=who,
        jobs=rows,
        filters=given,
        phases=[p.value for p in Phase],
        jobtypes=sorted(jobs.jobtypes),
        tags=_supported("tag"),
        ids=_supported("id_prefix"),
        next_url="/?" + urlencode({**given, "cursor": next_cursor}) if next_cursor else None,
        first_url="/?" + urlencode(given) if params.get("cursor") else None,
        live=live,
    )


# -- one job ----------------------------------------------------------------------------------


def job_view(request: Request, user: User, job_id: str) -> dict[str, Any]:
    """What a job page shows (and its live stream sends again)."""
    jobs = _jobs(request)
    job = jobs.get(user, job_id)
    out = full_job(request, jobs, job)
    events = [event_out(e) for e in jobs.events(user, job.id)]
    results = []
    if job.terminal:  # results are listed once the job ended
        try:
            results = jobs.results(user, job.id)
        except JobmillError:
            results = []
    waits = None
    if jobs.data is not None:
        stored = jobs.data.condition(job.id)
        if stored is not None:
            waits = {
                "paths": list(stored.condition.paths),
                "mode": stored.condition.mode,
                "released": stored.released_at,
                "released_by": stored.released_by,
            }
    return {"job": out, "events": events, "results": results, "waits": waits}


def full_job(request: Request, jobs: JobService, job: Job) -> dict[str, Any]:
    """A job as the API shows one job: with its tags, its dependencies and children, and its
    PipelineJobs state, where this server has them."""
    if hasattr(jobs, "with_tags"):
        job = jobs.with_tags(job)
    if hasattr(jobs, "with_links"):
        job = jobs.with_links([job])[0]
    out = job_out(job)
    pipeline = getattr(request.app.state.jobmill, "pipeline", None)
    status = pipeline.summary(job.id) if pipeline is not None else None
    if status is not None:
        state = getattr(status, "state", None)
        out["pipeline"] = getattr(state, "value", state)
    return out


def read_log(jobs: JobService, user: User, job_id: str, stream: str) -> dict[str, Any]:
    chunk = jobs.read_log(user, job_id, stream, tail=LOG_TAIL, limit=LOG_TAIL)
    return {
        "text": chunk.text.decode("utf-8", "replace"),
        "end": chunk.offset + len(chunk.text),
        "exists": chunk.exists,
        "cut": chunk.offset > 0,
    }


@router.get("/ui/jobs/{job_id}")
def job_page(request: Request, job_id: str, who: ViewerDep) -> Response:
    user = reader(who)
    view = job_view(request, user, job_id)
    jobs = _jobs(request)
    logs = {s: read_log(jobs, user, view["job"]["id"], s) for s in ("stdout", "stderr")}
    live = f"/ui/live/jobs/{view['job']['id']}?" + urlencode(
        {"stdout": logs["stdout"]["end"], "stderr": logs["stderr"]["end"]}
    )
    return page("job.html", who=who, logs=logs, live=live, **view)


@router.get("/ui/jobs/{job_id}/results/{result_id}")
def job_result(request: Request, job_id: str, result_id: str, who: ViewerDep) -> Response:
    """A result file, downloaded (as the API's ``GET .../results/{id}``)."""
    user = reader(who)
    result, handle = _jobs(request).open_result(user, job_id, result_id)
    return send_file(handle, result.content_type, filename=result.path.name)


@router.get("/ui/jobs/{job_id}/logs/{stream}")
def job_log(request: Request, job_id: str, stream: str, who: ViewerDep) -> Response:
    """A whole log as plain text (the page shows its tail)."""
    user = reader(who)
    chunk = _jobs(request).read_log(user, job_id, stream, limit=8 << 20)
    return Response(
        chunk.text,
        media_type="text/plain; charset=utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


@router.get("/ui/jobs/{job_id}/provenance.svg")
def job_provenance(request: Request, job_id: str, who: ViewerDep) -> Response:
    """The job's provenance graph as the provenance service draws it."""
    user = reader(who)
    rendered = provenance_service(request).render(user, job_id, "svg")
    return Response(
        rendered.body,
        media_type=rendered.media_type,
        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
    )


ACTIONS: dict[str, tuple[str, bool]] = {
    # action: (what the button says, needs a confirmation)
    "abort": ("Abort", True),
    "delete": ("Delete", True),
    "hold": ("Hold", False),
    "release": ("Release", False),
    "run": ("Run", False),
}


@router.get("/ui/jobs/{job_id}/{action}")
def confirm_page(request: Request, job_id: str, action: str, who: ViewerDep) -> Response:
    """The confirmation of an action (a page, so it needs no JavaScript)."""
    if action not in ACTIONS:
        raise NotFound(f"no page '{action}' for a job", field="action")
    user = reader(who)
    job = job_out(_jobs(request).get(user, job_id))
    return page("confirm.html", who=who, job=job, action=action, label=ACTIONS[action][0])


@router.post("/ui/jobs/{job_id}/{action}")
async def job_action(request: Request, job_id: str, action: str, who: ViewerDep) -> Response:
    if action not in ACTIONS:
        raise NotFound(f"no action '{action}' on a job", field="action")
    form = await read_form(request)
    user = writer(who, form.get("csrf"))
    jobs = _jobs(request)
    if action == "delete":
        await run_in_threadpool(jobs.delete, user, job_id)
        return _see_other("/")
    method = {"abort": jobs.abort, "hold": jobs.hold, "release": jobs.release, "run": jobs.run}
    job = await run_in_threadpool(method[action], user, job_id)
    return _see_other(_job_url(job.id))


# -- job types and their forms ----------------------------------------------------------------


@router.get("/ui/jobtypes")
def jobtypes_page(request: Request, who: ViewerDep) -> Response:
    reader(who)
    jobtypes = _jobs(request).jobtypes
    return page("jobtypes.html", who=who, jobtypes=[jobtypes[n] for n in sorted(jobtypes)])


@router.get("/ui/jobtypes/{name}")
def jobtype_page(
    request: Request,
    name: str,
    who: ViewerDep,
    clone: Annotated[str | None, Query(alias="from", max_length=64)] = None,
) -> Response:
    """The job type and its form; ``from=<job id>`` fills it with that job's parameters."""
    user = reader(who)
    jobs = _jobs(request)
    jobtype = jobs.jobtype(name)
    values: dict[str, Any] = {}
    run_id = ""
    if clone:
        source = jobs.get(user, clone)
        if source.type != jobtype.name:
            raise ValidationError(f"job {source.id} is of type {source.type}", field="from")
        values, run_id = dict(source.parameters), source.run_id or ""
    return page(
        "jobtype.html",
        who=who,
        jobtype=jobtype,
        fields=forms.fields(jobtype, values),
        run_id=run_id,
        error=None,
    )


@router.post("/ui/jobtypes/{name}")
async def submit_job(request: Request, name: str, who: ViewerDep) -> Response:
    """Submit the form: a new job (303 to its page), or the form again with the error next to
    the field it names (422)."""
    form = await read_form(request)
    user = writer(who, form.get("csrf"))
    jobs = _jobs(request)
    jobtype = jobs.jobtype(name)
    for key, value in form.items():
        if len(value) > forms.MAX_VALUE:
            raise ValidationError(f"over {forms.MAX_VALUE} characters", field=key)
    parameters = forms.parameters(jobtype, form)
    run_id = form.get("run_id", "").strip() or None
    request_ = JobRequest(type=jobtype.name, parameters=parameters, run_id=run_id)
    try:
        job = await run_in_threadpool(jobs.create, user, request_)
    except ValidationError as exc:
        fields = forms.fields(jobtype, {**parameters})
        for field in fields:
            if field.name not in parameters:
                field.value = ""
        target = forms.error_field(exc.field, jobtype)
        for field in fields:
            if field.name == target:
                field.error = exc.message
        return page(
            "jobtype.html",
            422,
            who=who,
            jobtype=jobtype,
            fields=fields,
            run_id=run_id or "",
            error=None if target else exc,
        )
    return _see_other(_job_url(job.id))


# -- ARP: the run grid ------------------------------------------------------------------------


@router.get("/ui/experiments")
def experiments_page(request: Request, who: ViewerDep) -> Response:
    reader(who)
    name = request.query_params.get("experiment", "").strip()
    if name:
        return _see_other(f"/ui/experiments/{quote(name, safe='')}")
    _experiments(request)
    return page("experiments.html", who=who)


def grid(
    svc: ExperimentService, user: User, experiment: str, before: int | None = None
) -> dict[str, Any]:
    """Runs (newest first) x definitions, each cell the job of that pair if there is one."""
    definitions = svc.definitions(experiment)
    runs = svc.runs(experiment, limit=GRID_RUNS + 1, before=before)
    more = len(runs) > GRID_RUNS
    runs = runs[:GRID_RUNS]
    cells: dict[tuple[int, str], dict[str, Any]] = {}
    summary: dict[str, int] = {}
    for run in runs:
        for entry in svc.entries(user, experiment, run=run.run):
            names = status_names(entry.job, slow=entry.slow)
            counters = entry.job.report.get("counters")
            cells[(run.run, entry.application.definition)] = {
                "job": job_out(entry.job),
                "status": names.status,
                "workflow": names.workflow,
                "counters": counters if isinstance(counters, dict) else {},
                "terminal": entry.job.terminal,
            }
            summary[names.workflow] = summary.get(names.workflow, 0) + 1
    return {
        "experiment": experiment,
        "definitions": definitions,
        "runs": runs,
        "cells": cells,
        "summary": sorted(summary.items()),
        "older": runs[-1].run if more and runs else None,
    }


@router.get("/ui/experiments/{experiment}")
def experiment_page(
    request: Request,
    experiment: str,
    who: ViewerDep,
    before: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
) -> Response:
    user = reader(who)
    view = grid(_experiments(request), user, experiment, before)
    live = f"/ui/live/experiments/{quote(experiment, safe='')}" + (
        f"?before={before}" if before is not None else ""
    )
    return page("experiment.html", who=who, live=live, **view)


@router.post("/ui/experiments/{experiment}/{action}")
async def experiment_action(
    request: Request, experiment: str, action: str, who: ViewerDep
) -> Response:
    """``apply`` (run, definition), ``kill`` and ``remove`` (job), ``autorun`` (definition,
    on)."""
    form = await read_form(request)
    user = writer(who, form.get("csrf"))
    svc = _experiments(request)
    back = f"/ui/experiments/{quote(experiment, safe='')}"
    if action == "apply":
        run = _run_number(form.get("run", ""))
        await run_in_threadpool(svc.apply, user, experiment, run, form.get("definition", ""))
    elif action == "kill":
        await run_in_threadpool(svc.kill, user, experiment, form.get("job", ""))
    elif action == "remove":
        await run_in_threadpool(svc.remove, user, experiment, form.get("job", ""), kill=True)
    elif action == "autorun":
        on = form.get("on") == "true"
        await run_in_threadpool(svc.set_autorun, user, experiment, form.get("definition", ""), on)
    else:
        raise NotFound(f"no action '{action}' on an experiment", field="action")
    return _see_other(back)


@router.get("/ui/experiments/{experiment}/confirm/{action}")
def experiment_confirm(
    request: Request, experiment: str, action: str, who: ViewerDep, job: str = ""
) -> Response:
    """Confirm killing or removing a run's job."""
    if action not in ("kill", "remove"):
        raise NotFound(f"no action '{action}' to confirm", field="action")
    user = reader(who)
    entry = _experiments(request).entry(user, experiment, job)
    return page(
        "confirm_arp.html",
        who=who,
        experiment=experiment,
        action=action,
        job=job_out(entry.job),
        definition=entry.application.definition,
        run=entry.application.run,
    )


def _run_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValidationError("not a run number", field="run") from None


# -- rules and data waits ---------------------------------------------------------------------


@router.get("/ui/rules")
def rules_page(request: Request, who: ViewerDep) -> Response:
    user = reader(who)
    engine = _rules(request)
    rules = []
    if engine is not None:
        for rule in engine.rules():
            firings = engine.firings(rule.name, limit=5)
            next_slot = engine.next_slot(rule) if rule.schedule is not None else None
            rules.append({"rule": rule, "firings": firings, "next_slot": next_slot})
    return page("rules.html", who=who, rules=rules, admin=user.admin, enabled=engine is not None)


@router.post("/ui/rules/{name}/{action}")
async def rule_action(request: Request, name: str, action: str, who: ViewerDep) -> Response:
    form = await read_form(request)
    user = writer(who, form.get("csrf"))
    engine = _rules(request)
    if engine is None or action not in ("enable", "disable"):
        raise NotFound(f"no action '{action}' on rules here", field="action")
    if not user.admin:
        raise Forbidden("only administrators switch rules on and off", field="name")
    await run_in_threadpool(engine.set_enabled, user, name, action == "enable")
    return _see_other("/ui/rules")


@router.get("/ui/waits")
def waits_page(request: Request, who: ViewerDep) -> Response:
    """Jobs waiting for data, and what each waits for."""
    user = reader(who)
    jobs = _jobs(request)
    found = jobs.list(user, JobFilter(phases=[Phase.QUEUED]), limit=1000).jobs
    waiting = []
    for job in found:
        if job.reason != WAITING_FOR_DATA:
            continue
        stored = jobs.data.condition(job.id) if jobs.data is not None else None
        waiting.append({"job": job_out(job), "condition": stored})
    return page("waits.html", who=who, waiting=waiting)
