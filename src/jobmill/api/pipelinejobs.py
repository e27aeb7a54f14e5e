"""The PipelineJobs face under ``/api/v1/pipelinejobs`` (docs/pipelinejobs.md).

One endpoint takes events the three ways the PipelineJobs Manager did:

1. a JSON event ``{"uuid", "name", "data"?, "token"?}`` (no other keys);
2. URL parameters ``uuid``, ``event`` (or ``name``), ``token``, ``note`` (becomes
   ``data.note``), with the POST body, if any, as the event's ``data``;
3. an Agave/Tapis job callback: the Agave job JSON as the body, with ``uuid``, ``token`` and
   ``status`` as URL parameters; the status is mapped to an event
   (``domain.pipelinejobs.AGAVE_STATUSES``).

A delivery may name itself (``Idempotency-Key`` header or ``event_id`` parameter) so that a
retry is recorded once; an Agave callback is named by its status and body.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from jobmill.api.auth import Authenticator, current_user
from jobmill.api.responses import COMMON, NAMES_SOMETHING, errors, query
from jobmill.api.schemas import job_out
from jobmill.domain.errors import ValidationError
from jobmill.domain.jobs import JobRequest, iso
from jobmill.domain.pipelinejobs import (
    HistoryEntry,
    Nonce,
    PipelineEvent,
    PipelineStatus,
    agave_event,
)
from jobmill.domain.users import User
from jobmill.domain.values import INT32_MAX
from jobmill.service.pipelinejobs import Caller, PipelineRecord, PipelineService

PREFIX = "/api/v1/pipelinejobs"
router = APIRouter(prefix=PREFIX, tags=["pipelinejobs"], responses=errors(*COMMON))
UserDep = Annotated[User, Depends(current_user)]

EVENT_KEYS = frozenset({"uuid", "name", "data", "token"})
URL_PARAMETERS = frozenset(
    {"uuid", "event", "name", "token", "note", "status", "state", "event_id", "session", "x-nonce"}
)
"""What the event endpoint reads from the URL. ``x-nonce`` is a nonce jobmill issued
(``POST /api/v1/pipelinejobs/{id}/nonces``); ``session`` (the reference's webhook carries it)
is accepted and ignored."""
NO_PAYLOAD = "Event had no JSON payload"
AGAVE_DROPPED = ("_links", "retries", "localId")


async def _service(request: Request) -> PipelineService:
    service: PipelineService | None = request.app.state.jobmill.pipeline
    assert service is not None
    return service


ServiceDep = Annotated[PipelineService, Depends(_service)]


class PipelineCreate(BaseModel):
    """``POST /api/v1/pipelinejobs``: a job (the fields of ``POST /api/v1/jobs`` without data
    waits) and the ``data`` of its ``create`` event."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=64, description="job type name")
    parameters: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = Field(default=None, max_length=256)
    executor: str | None = Field(
        default=None, max_length=32, description="'external': jobmill never runs it"
    )
    execution_duration: int | None = Field(default=None, ge=0, le=INT32_MAX)
    log_dir: str | None = Field(default=None, max_length=4096)
    phase: Literal["PENDING", "QUEUED"] = Field(
        default="QUEUED", description="an external job is always created PENDING"
    )
    data: dict[str, Any] = Field(default_factory=dict, description="the create event's data")


EVENT_BODY: dict[str, Any] = {
    NAMES_SOMETHING: True,  # the job named in the body or the URL: 404 when there is none
    "requestBody": {
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {
                            "type": "object",
                            "required": ["uuid", "name"],
                            "additionalProperties": False,
                            "properties": {
                                "uuid": {"type": "string"},
                                "name": {"type": "string"},
                                "data": {"type": "object"},
                                "token": {"type": "string"},
                            },
                        },
                        {"type": "object", "description": "URL-parameter event: its data"},
                        {"type": "object", "description": "an Agave job (with ?status=)"},
                    ]
                }
            }
        }
    },
    **query(
        uuid={"type": "string"},
        event={"type": "string"},
        name={"type": "string"},
        token={"type": "string"},
        note={"type": "string", "maxLength": 4096},
        status={"type": "string"},
        event_id={"type": "string", "maxLength": 256},
        **{"x-nonce": {"type": "string"}},
    ),
}


def status_out(status: PipelineStatus) -> dict[str, Any]:
    """A PipelineJob's status as the API shows it (with its record's fingerprint, re-run and
    update token state when it was read from its record)."""
    out: dict[str, Any] = {
        "uuid": status.job_id,
        "state": status.state.value,
        "last_event": status.last_event,
        "phase": status.phase.value,
        "curation": status.curation.value if status.curation is not None else None,
        "executor": status.executor,
        "indexer_job": status.indexer_job,
        "history_url": f"{PREFIX}/{status.job_id}/history",
    }
    if isinstance(status, PipelineRecord):
        out["fingerprint"] = status.fingerprint
        out["superseded_by"] = status.superseded_by
        out["update_token"] = "active" if status.update_token else "revoked"
    return out


def callback_url(request: Request, job_id: str, token: str) -> str:
    """The URL an Agave job notifies (append ``&status=${JOB_STATUS}``), with the job's
    current update token."""
    base = str(request.base_url).rstrip("/")
    return f"{base}{PREFIX}/events?uuid={job_id}&token={token}"


def pipeline_field(request: Request, job_id: str) -> dict[str, Any] | None:
    """The ``pipeline`` field of a job in the native API (None: not a PipelineJob)."""
    service: PipelineService | None = request.app.state.jobmill.pipeline
    found = service.summary(job_id) if service is not None else None
    return status_out(found) if found is not None else None


def job_info(request: Request, job_id: str) -> tuple[str, str] | None:
    """A PipelineJob's (state, last event) for the UWS job document's ``jobInfo``."""
    service: PipelineService | None = request.app.state.jobmill.pipeline
    found = service.summary(job_id) if service is not None else None
    return (found.state.value, found.last_event) if found is not None else None


def entry_out(entry: HistoryEntry) -> dict[str, Any]:
    """A history entry: the reference's ``{date, name, data, uuid}``, and the state after it."""
    return {
        "date": iso(entry.at),
        "name": entry.name,
        "data": entry.data,
        "uuid": entry.uuid,
        "state": entry.state,
        "actor": entry.actor,
        "n": entry.seq,
    }


@router.post("", status_code=201, responses=errors(409, 507))
def create(body: PipelineCreate, service: ServiceDep, user: UserDep, request: Request) -> Response:
    """Create a PipelineJob: ``{uuid, state, token, callback, fingerprint, rerun_of, pipeline,
    job}``. The update token is shown only here; ``callback`` is the URL an Agave job notifies
    (append ``&status=${JOB_STATUS}``). The same job (type, parameters, parents: its
    ``fingerprint``) created again answers 409 naming it (``uuid``), unless it is FAILED,
    REJECTED or RETIRED: then the new job is its re-run (``rerun_of``)."""
    created = service.create(
        user,
        JobRequest(
            type=body.type,
            parameters=body.parameters,
            run_id=body.run_id,
            executor=body.executor,
            execution_duration=body.execution_duration,
            log_dir=body.log_dir,
            start=body.phase == "QUEUED",
        ),
        body.data,
    )
    job_id = created.job.id
    content = {
        "uuid": job_id,
        "state": created.status.state.value,
        "token": created.token,
        "callback": callback_url(request, job_id, created.token),
        "fingerprint": created.status.fingerprint,
        "rerun_of": created.rerun_of,
        "pipeline": status_out(created.status),
        "job": job_out(created.job),
    }
    return JSONResponse(content, status_code=201, headers={"Location": f"{PREFIX}/{job_id}"})


@router.post("/events", responses=errors(404, 409), openapi_extra=EVENT_BODY)
async def post_event(request: Request) -> Response:
    """Send a named event to a PipelineJob (the three ways in: module docstring). Answers
    ``{uuid, state, last_event, event, duplicate}``; 409 names the ``state`` and ``event``
    the table refused, and changes nothing."""
    service: PipelineService = request.app.state.jobmill.pipeline
    params = request.query_params
    unknown = sorted(set(params) - URL_PARAMETERS)
    if unknown:
        raise ValidationError(f"unknown URL parameter '{unknown[0]}'", field=unknown[0])
    user = None
    header = request.headers.get("authorization")
    if header and header.strip():
        auth: Authenticator = request.app.state.auth
        user = auth.user(header, request.method)
    raw = await request.body()
    body: Any = None
    if raw.strip():
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise ValidationError("the body must be JSON", field="body") from None
    event_id = request.headers.get("idempotency-key") or params.get("event_id")
    if "event" in params or "name" in params:
        job_id, name, token, data = _url_event(params, body)
    elif "uuid" in params:
        job_id, name, token, data, derived = _agave_event(params, body, raw)
        event_id = event_id or derived
    else:
        job_id, name, token, data = _json_event(body)
    caller = Caller(user=user, token=token, nonce=params.get("x-nonce") or None)
    applied = await service.post_async(caller, job_id, name, data, event_id=event_id)
    return JSONResponse(
        {
            "uuid": applied.status.job_id,
            "state": applied.status.state.value,
            "last_event": applied.status.last_event,
            "event": entry_out(applied.entry),
            "duplicate": applied.duplicate,
        }
    )


def _json_event(body: Any) -> tuple[Any, Any, str | None, Any]:
    if not isinstance(body, dict):
        raise ValidationError(
            "send a JSON event {uuid, name, data?, token?}, or uuid and event as URL parameters",
            field="body",
        )
    unknown = sorted(set(body) - EVENT_KEYS)
    if unknown:
        raise ValidationError(f"unknown key '{unknown[0]}'", field=unknown[0])
    for key in ("uuid", "name"):
        if key not in body:
            raise ValidationError(f"'{key}' is required", field=key)
    token = body.get("token")
    if token is not None and not isinstance(token, str):
        raise ValidationError("must be a string", field="token")
    return body["uuid"], body["name"], token, body.get("data")


def _url_event(params: Any, body: Any) -> tuple[Any, Any, str | None, Any]:
    event, name = params.get("event"), params.get("name")
    if event is not None and name is not None and event.lower() != name.lower():
        raise ValidationError("'event' and 'name' name different events", field="event")
    if body is not None and not isinstance(body, dict):
        raise ValidationError("the body (the event's data) must be a JSON object", field="body")
    note = params.get("note")
    data = dict(body) if isinstance(body, dict) else {}
    if note is not None:
        data["note"] = note
    elif body is None:
        data["note"] = NO_PAYLOAD
    return params.get("uuid"), event or name, params.get("token"), data


def _agave_event(params: Any, body: Any, raw: bytes) -> tuple[Any, Any, str | None, Any, str]:
    """An Agave job callback: the event its status maps to, and the data the reference kept
    (the slimmed job for RUNNING, else its status and latest history description)."""
    if body is not None and not isinstance(body, dict):
        raise ValidationError("the body (an Agave job) must be a JSON object", field="body")
    job = body or {}
    status = params.get("status") or job.get("status")
    if not isinstance(status, str) or not status:
        raise ValidationError("'status' is required with an Agave callback", field="status")
    event = agave_event(status)
    if event is PipelineEvent.RUN:
        data = {k: v for k, v in job.items() if k not in AGAVE_DROPPED}
    else:
        history = job.get("history")
        latest = history[-1] if isinstance(history, list) and history else {}
        description = latest.get("description") if isinstance(latest, dict) else None
        data = {"status": status, "description": description or job.get("lastStatusMessage")}
    digest = hashlib.sha256(raw).hexdigest()
    return params.get("uuid"), event.value, params.get("token"), data, f"agave/{status}/{digest}"


@router.get("/{job_id}", responses=errors(404))
def get_status(job_id: str, service: ServiceDep, user: UserDep) -> dict[str, Any]:
    """A PipelineJob's state (derived from its phase and curation status) and last event."""
    return status_out(service.status(user, job_id))


@router.get("/{job_id}/history", responses=errors(404))
def get_history(
    job_id: str,
    service: ServiceDep,
    user: UserDep,
    after: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> dict[str, Any]:
    """The job's history, oldest first: ``{date, name, data, uuid, state, actor, n}``; page
    with ``after`` = the last ``n`` seen."""
    status = service.status(user, job_id)
    entries = service.history(user, job_id, after=after, limit=limit)
    return {
        "uuid": status.job_id,
        "state": status.state.value,
        "history": [entry_out(e) for e in entries],
    }


class NonceCreate(BaseModel):
    """``POST /api/v1/pipelinejobs/{id}/nonces``."""

    model_config = ConfigDict(extra="forbid")

    events: list[str] = Field(
        default_factory=list,
        max_length=15,
        description="the events it allows (none: every event but create, reset and ready)",
    )
    lifetime: int | None = Field(default=None, description="seconds (default a day, at most 30)")


def nonce_out(nonce: Nonce) -> dict[str, Any]:
    return {
        "id": nonce.id,
        "uuid": nonce.job_id,
        "events": list(nonce.events),
        "created_by": nonce.created_by,
        "created": iso(nonce.created_at),
        "expires": iso(nonce.expires_at),
        "revoked": iso(nonce.revoked_at),
    }


@router.post("/{job_id}/nonces", status_code=201, responses=errors(404))
def create_nonce(
    job_id: str, body: NonceCreate, service: ServiceDep, user: UserDep, request: Request
) -> Response:
    """Issue a nonce for the job's events (its owner or an administrator): ``{id, nonce,
    callback, events, expires...}``; the nonce is shown only here. ``callback`` is the URL an
    Agave job notifies (append ``&status=${JOB_STATUS}``)."""
    nonce, secret = service.issue_nonce(user, job_id, events=body.events, lifetime=body.lifetime)
    callback = f"{PREFIX}/events?x-nonce={secret}&uuid={nonce.job_id}"
    content = {
        **nonce_out(nonce),
        "nonce": secret,
        "callback": str(request.base_url).rstrip("/") + callback,
    }
    return JSONResponse(content, status_code=201)


@router.get("/{job_id}/nonces", responses=errors(404))
def list_nonces(job_id: str, service: ServiceDep, user: UserDep) -> dict[str, Any]:
    """The job's nonces, without their secrets."""
    return {"nonces": [nonce_out(n) for n in service.nonces(user, job_id)]}


@router.delete("/{job_id}/nonces/{nonce_id}", responses=errors(404))
def revoke_nonce(
    job_id: str,
    nonce_id: Annotated[int, Path(ge=1, le=INT32_MAX)],
    service: ServiceDep,
    user: UserDep,
) -> dict[str, Any]:
    """Revoke a nonce: it authorises nothing from now on."""
    return nonce_out(service.revoke_nonce(user, job_id, nonce_id))


@router.post("/{job_id}/token", responses=errors(404))
def rotate_token(
    job_id: str, service: ServiceDep, user: UserDep, request: Request
) -> dict[str, Any]:
    """Issue the job a new update token (its owner or an administrator): ``{uuid, token,
    callback}``. The old token, and the callback URL that carries it, are refused (403) from
    now on; the new token is shown only here."""
    status, token = service.rotate_token(user, job_id)
    return {
        "uuid": status.job_id,
        "token": token,
        "callback": callback_url(request, status.job_id, token),
        "update_token": "active",
    }


@router.delete("/{job_id}/token", responses=errors(404))
def revoke_token(job_id: str, service: ServiceDep, user: UserDep) -> dict[str, Any]:
    """Revoke the job's update token (its owner or an administrator): from now on its events
    need a bearer token of its owner or an administrator, or a nonce. Revoking again is
    harmless; ``POST .../token`` issues a new one."""
    status = service.revoke_token(user, job_id)
    return {"uuid": status.job_id, "token": None, "callback": None, "update_token": "revoked"}


@router.delete("/{job_id}", status_code=204, responses=errors(404, 409))
def delete(job_id: str, service: ServiceDep, user: UserDep) -> Response:
    """Delete a PipelineJob (an administrator's only, as the reference's delete action)."""
    service.delete(user, job_id)
    return Response(status_code=204)
