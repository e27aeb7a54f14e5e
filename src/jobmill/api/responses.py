"""What ``/openapi.json`` says each operation answers, and what the faces read themselves.

The native, ARP and rules faces answer errors as ``{"error": {"code", "message", "field"}}``;
the OCPS face as its envelope ``{"status": "error", "msg", "message", "field"}``; the UWS face as
plain text. Every operation lists the codes it really answers: ``COMMON`` plus its own, and
``openapi_document`` drops the codes FastAPI would list but the operation cannot answer. The
form fields, query arguments and bodies the UWS, OCPS and report handlers parse by hand are
documented here too, so that clients (and the fuzzer, tests/security/test_fuzz.py) know them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

COMMON = (400, 401, 403, 413, 422)
"""What any operation may answer: 400 (a ``Host`` this server does not answer to, a malformed
body), 401 (no valid credentials), 403 (not allowed, or a cross-origin browser request), 413 (a
body over its limit), 422 (a value that breaks a rule; the field is named)."""

WHY = {
    400: "a malformed request, or a Host this server does not answer to",
    401: "no valid credentials",
    403: "not allowed to the caller, or a cross-origin request from a browser",
    404: "no such job, job type, experiment, definition, run or rule (or not the caller's)",
    409: "not possible in the current state (the job's phase, a name already taken...)",
    413: "the request body is over its limit",
    422: "a value is missing, unknown, malformed or out of range: the field is named",
    503: "the job's backend cannot be asked right now: try again later",
    507: "the server's disk is (nearly) full: nothing was created; try again later",
}


class ErrorDetail(BaseModel):
    """What went wrong, and with which field of the request."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(description="invalid, not_found, conflict, forbidden, unauthorized...")
    message: str
    field: str | None = Field(default=None, description="the request field at fault")


class ErrorOut(BaseModel):
    """An error answer of the native, ARP and rules faces."""

    error: ErrorDetail


class OcpsErrorOut(BaseModel):
    """An error answer of the OCPS face (the prototype's envelope; both keys carry the text)."""

    model_config = ConfigDict(extra="allow")

    status: str = Field(description='"error"')
    msg: str
    message: str | None = None
    field: str | None = None


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a native, ARP or rules operation answering these error codes."""
    return {status: {"model": ErrorOut, "description": WHY[status]} for status in statuses}


def ocps_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of an OCPS operation (invalid values are 400 there, as in the prototype)."""
    return {status: {"model": OcpsErrorOut, "description": WHY[status]} for status in statuses}


TEXT: dict[str, Any] = {"text/plain": {"schema": {"type": "string"}}}


def uws_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a UWS operation: errors are plain text (400 for any invalid value)."""
    return {status: {"description": WHY[status], "content": TEXT} for status in statuses}


# -- what the UWS and OCPS faces read themselves (form fields, query arguments) ---------------

Responses = dict[int | str, dict[str, Any]]

XML_OK: Responses = {
    200: {
        "description": "a UWS 1.1 XML document",
        "content": {"application/xml": {"schema": {"type": "string"}}},
    }
}
TEXT_OK: Responses = {200: {"description": "the value as text", "content": TEXT}}
SEE_OTHER: Responses = {303: {"description": "See Other: Location is the job (or the job list)"}}
_INT = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_INSTANT = {"type": "string", "format": "date-time"}
_CONTROL = {
    "PHASE": {"type": "string", "enum": ["RUN", "ABORT"]},
    "RUNID": {"type": "string", "maxLength": 256},
    "EXECUTIONDURATION": _INT,
    "DESTRUCTION": _INSTANT,
    "ACTION": {"type": "string", "enum": ["DELETE"]},
}


def uws_form(*names: str, parameters: bool = True) -> dict[str, Any]:
    """``openapi_extra`` of a UWS POST: the control fields ``names``, and (``parameters``) the
    job type's parameters by name, as form fields."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: _CONTROL.get(name, {"type": "string"}) for name in names},
    }
    if parameters:
        schema["additionalProperties"] = {"type": "string"}
    form = {"application/x-www-form-urlencoded": {"schema": schema}}
    return {"requestBody": {"content": form}}


def query(**arguments: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` documenting query arguments a handler reads itself."""
    return {
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in arguments.items()
        ]
    }


UWS_LIST_QUERY = query(
    PHASE={"type": "array", "items": {"type": "string"}}, AFTER=_INSTANT, LAST=_INT
)
UWS_JOB_QUERY = query(WAIT={"type": "number", "minimum": -1}, PHASE={"type": "string"})
UWS_TEXT_BODY = {
    "requestBody": {"content": {"text/plain": {"schema": {"type": "string", "maxLength": 65536}}}}
}
OCPS_SUBMIT = {
    "requestBody": {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["type", "env", "log_dir"],
                    "properties": {
                        "type": {"type": "string"},
                        "env": {"type": "object", "additionalProperties": {"type": "string"}},
                        "log_dir": {"type": "string"},
                    },
                }
            },
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["type", "env", "log_dir"],
                    "properties": {
                        "type": {"type": "string"},
                        "env": {"type": "string", "description": "a JSON object"},
                        "log_dir": {"type": "string"},
                    },
                }
            },
        }
    }
}
OCPS_PUT = {  # the OCPS successor service's PUT /job (or the draft spec's, with "type")
    "requestBody": {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "command": {"type": "string"},
                        "run_id": {"type": "string"},
                        "environment": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "value": {}},
                            },
                        },
                        "url": {"type": "string"},
                        "commit_ref": {"type": "string"},
                        "replicas": {"type": "integer"},
                        "type": {"type": "string"},
                        "env": {},
                    },
                }
            }
        }
    }
}
OCPS_ID = query(id={"type": "string"})


NAMES_SOMETHING = "x-jobmill-names"
"""Set (``openapi_extra={NAMES_SOMETHING: True}``) on an operation without a path parameter
that still names something that may not exist (a job in its body or query): its 404 stays."""


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, listing only the codes each operation can answer: no 422
    where the face answers invalid input with 400 (UWS, OCPS; FastAPI lists 422 for every
    operation with parameters) or where there is no input at all, no 404 without a path
    parameter naming something."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                parameters = operation.get("parameters", [])
                if {"uws", "ocps"} & set(operation.get("tags", ())) or not (
                    parameters or "requestBody" in operation
                ):
                    responses.pop("422", None)
                names = operation.pop(NAMES_SOMETHING, False)
                if not names and not any(p.get("in") == "path" for p in parameters):
                    responses.pop("404", None)
        app.openapi_schema = document
    return app.openapi_schema
