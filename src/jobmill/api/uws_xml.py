"""UWS 1.1 wire formats for the face in ``api/uws.py``: XML documents (job list, job,
parameters, results) valid against the IVOA schema, text values, errors as plain text, 303
answers, and the parsing of the values UWS requests carry (phases, integers, WAIT, AFTER).

Elements come in the schema's order; times are UTC with a ``Z``; ``quote`` is nil (jobmill makes
no estimates); ``errorSummary`` appears only when the job failed or was aborted; every link is an
absolute URL. Text that XML 1.0 cannot carry (control characters) never reaches a document: a
parameter holding such a value is rendered ``byReference`` (its value is served as text at its
own URL), other text has the characters replaced by U+FFFD.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Response
from lxml import etree

from jobmill.domain.errors import JobmillError, Kind, ValidationError, http_status
from jobmill.domain.jobs import Job, JobRef, iso
from jobmill.domain.jobtypes import JobType
from jobmill.domain.lifecycle import Phase
from jobmill.service.files import JobFiles
from jobmill.service.jobs import parse_time
from jobmill.service.results import ResultFile

UWS_NS = "http://www.ivoa.net/xml/UWS/v1.0"
XLINK_NS = "http://www.w3.org/1999/xlink"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
JOBMILL_NS = "urn:jobmill"
VERSION = "1.1"
MEDIA_TYPE = "application/xml"
TEXT = "text/plain; charset=utf-8"
UPLOADS = "uploads"
ERROR_TAIL = 64 << 10
XS_INT_MAX = 2**31 - 1
SERVICE_FIELDS = {"run_id": "RUNID", "execution_duration": "EXECUTIONDURATION"}
NSMAP = {"uws": UWS_NS, "xlink": XLINK_NS, "xsi": XSI_NS}

_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> bool:
    """Whether XML 1.0 can carry ``text`` as it is."""
    return _NOT_XML.search(text) is None


def clean(text: str) -> str:
    """``text`` with the characters XML 1.0 cannot carry replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


def segment(value: str) -> str:
    """A value as URL path segment(s): ``/`` kept, everything else unsafe percent-encoded."""
    return quote(value, safe="/")


@dataclass(frozen=True)
class Param:
    """One parameter as UWS shows it: inline text, or a URL (``by_reference``)."""

    id: str
    value: str
    by_reference: bool = False


@dataclass(frozen=True)
class ErrorInfo:
    """What ``errorSummary`` says; the full text is at ``/error``."""

    message: str
    fatal: bool


@dataclass(frozen=True)
class JobView:
    """Everything the job document shows, gathered by the face."""

    job: Job
    url: str
    parameters: Sequence[Param]
    results: Sequence[ResultFile]
    error: ErrorInfo | None
    links: Sequence[Link] = ()
    pipeline: tuple[str, str] | None = None
    """A PipelineJob's (state, last event), shown in ``jobInfo``."""


@dataclass(frozen=True)
class Link:
    """A result served elsewhere (provenance documents): id, absolute URL, media type."""

    id: str
    href: str
    content_type: str


# -- answers ------------------------------------------------------------------------------------


def text(value: str, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(value, status_code=status, media_type=TEXT, headers=headers)


def document(body: bytes) -> Response:
    return Response(body, media_type=MEDIA_TYPE)


def see_other(url: str) -> Response:
    return Response(status_code=303, headers={"Location": url})


def error_response(exc: JobmillError) -> Response:
    """Plain text, the status by the error's kind (``domain.errors.KINDS``): 400 for a usage
    error, 403 for a request illegal in the job's phase (UWS §2.2), else the error's own."""
    message = exc.message
    if exc.kind is Kind.USAGE:
        field = SERVICE_FIELDS.get(exc.field or "", exc.field)
        if field and field.removeprefix("parameters.") not in message:
            message = f"{field}: {message}"
    status = http_status(exc, "uws")
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return text(clean(message), status, headers)


# -- values in requests --------------------------------------------------------------------


def parse_phase(value: str) -> Phase:
    """A phase name, any case."""
    try:
        return Phase(value.strip().upper())
    except ValueError:
        known = ", ".join(p.value for p in Phase)
        message = f"PHASE: '{clean(value)}' is not a phase ({known})"
        raise ValidationError(message, field="PHASE") from None


def parse_int(value: str, name: str) -> int:
    """An integer control value (``EXECUTIONDURATION``, ``LAST``) within ``xs:int``."""
    try:
        number = int(value.strip())
    except ValueError:
        message = f"{name}: '{clean(value)}' is not an integer"
        raise ValidationError(message, field=name) from None
    if abs(number) > XS_INT_MAX:
        raise ValidationError(f"{name}: {number} is out of range", field=name)
    return number


def wait_seconds(value: str, cap: float) -> float:
    """``WAIT``: seconds, capped; ``-1`` is the cap."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if seconds == -1:
        return cap
    if not 0 <= seconds < math.inf:
        message = f"WAIT: '{clean(value)}' is not a number of seconds (or -1)"
        raise ValidationError(message, field="WAIT")
    return min(seconds, cap)


def parse_instant(value: str, name: str) -> datetime:
    """An ISO 8601 instant (``DESTRUCTION``, ``AFTER``) in UTC; without an offset it is UTC."""
    try:
        when = parse_time(value.strip(), name).astimezone(UTC)
        if when.year >= 9999:
            raise OverflowError
    except OverflowError:
        raise ValidationError(f"{name}: '{clean(value)}' is out of range", field=name) from None
    return when


_YEAR_OR_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def parse_utc_instant(value: str, name: str) -> datetime:
    """An ISO 8601 time in UTC (UWS §2.2.1): ``Z``, ``+00:00`` or no offset; a bare year or
    date (``2015``, ``2015-10``, ``2015-10-26``) is its first instant. Another offset is 400."""
    text = value.strip()
    partial = _YEAR_OR_DATE.fullmatch(text)
    if partial:
        year, month, day = (int(part) if part else 1 for part in partial.groups())
        try:
            return datetime(year, month, day, tzinfo=UTC)
        except ValueError:
            raise ValidationError(f"{name}: '{clean(value)}' is not a date", field=name) from None
    when = parse_time(text, name)
    if when.utcoffset() != timedelta(0):
        shown = clean(text.replace(" ", "+"))  # a query's '+' arrives as a space
        raise ValidationError(
            f"{name}: '{shown}' is not in UTC; UWS times are UTC, with a Z "
            "(e.g. 2015-10-26T10:00:00Z)",
            field=name,
        )
    return parse_instant(text, name)


def created_after(value: str) -> datetime:
    """``AFTER`` at the precision ``creationTime`` is shown with: a job counts as created after
    ``t`` when its creation time, cut to milliseconds, is later than ``t``."""
    when = parse_utc_instant(value, "AFTER")
    return when.replace(microsecond=when.microsecond // 1000 * 1000) + timedelta(microseconds=999)


# -- what the job shows -------------------------------------------------------------------------


def upload_value(name: str) -> str:
    """What the process gets for an uploaded file: its path relative to the working directory."""
    return f"{UPLOADS}/{name}"


def upload_path(files: JobFiles, job: Job, name: str) -> Path | None:
    """The uploaded file behind parameter ``name``, if it is one."""
    value = job.parameters.get(name, job.extra_parameters.get(name))
    if value != upload_value(name):
        return None
    path = files.workdir(job.id) / UPLOADS / name
    return path if path.is_file() else None


def parameters_of(files: JobFiles, job: Job, job_url: str) -> list[Param]:
    """Declared then undeclared parameters; uploads and values XML cannot carry by reference."""
    out = []
    for name, value in [*job.parameters.items(), *job.extra_parameters.items()]:
        shown = value_text(value)
        if not xml_safe(shown) or upload_path(files, job, name) is not None:
            out.append(Param(name, f"{job_url}/parameters/{segment(name)}", True))
        else:
            out.append(Param(name, shown))
    return out


def error_info(job: Job) -> ErrorInfo | None:
    """An ERROR job's error (fatal), or an ABORTED job's reason (transient)."""
    if job.phase is Phase.ERROR:
        fallback = f"exit code {job.exit_code}" if job.exit_code is not None else "the job failed"
        return ErrorInfo(job.error or fallback, fatal=True)
    if job.phase is Phase.ABORTED and job.error:
        return ErrorInfo(job.error, fatal=False)
    return None


def error_text(files: JobFiles, job: Job) -> str:
    """``/error``: the message, the exit code and the end of stderr; empty without an error."""
    info = error_info(job)
    if info is None:
        return ""
    parts = [info.message]
    if job.exit_code is not None:
        parts.append(f"exit code: {job.exit_code}")
    chunk = files.read_log(job, "stderr", tail=ERROR_TAIL, limit=ERROR_TAIL)
    if chunk.text:
        parts.append(f"stderr (last {len(chunk.text)} of {chunk.size} bytes):")
        parts.append(chunk.text.decode("utf-8", "replace"))
    return clean("\n".join(parts))


def _u(name: str) -> str:
    return f"{{{UWS_NS}}}{name}"


def _x(name: str) -> str:
    return f"{{{XLINK_NS}}}{name}"


def _root(name: str, *, version: bool = False) -> etree._Element:
    root = etree.Element(_u(name), nsmap=NSMAP)
    if version:
        root.set("version", VERSION)
    return root


def _text(parent: etree._Element, name: str, value: str | None, *, nillable: bool) -> None:
    """A child with text; ``None`` becomes ``xsi:nil`` (nillable) or no element at all."""
    if value is None:
        if nillable:
            etree.SubElement(parent, _u(name)).set(f"{{{XSI_NS}}}nil", "true")
        return
    etree.SubElement(parent, _u(name)).text = clean(value)


def _serialise(root: etree._Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def value_text(value: Any) -> str:
    """A parameter value as text (``true``/``false`` for booleans, like the process sees it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- documents ----------------------------------------------------------------------------------


_LIST_HEAD = (
    "<?xml version='1.0' encoding='UTF-8'?>\n"
    f'<uws:jobs xmlns:uws="{UWS_NS}" xmlns:xlink="{XLINK_NS}" xmlns:xsi="{XSI_NS}" '
    f'version="{VERSION}"'
)
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTR_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\t": "&#9;", "\n": "&#10;",
     "\r": "&#13;"}
)  # fmt: skip


def _escape(value: str) -> str:
    return clean(value).translate(_TEXT_ESCAPES)


def _quote(value: str) -> str:
    return clean(value).translate(_ATTR_ESCAPES)


def job_list(jobs: Iterable[Job | JobRef], list_url: str) -> bytes:
    """``<uws:jobs>``: one ``jobref`` per job with phase, runId, ownerId and creationTime.

    Written as text rather than through lxml: a list has up to 1000 entries, and building
    elements one by one costs twice as much. Byte for byte what ``lxml`` would write; the same
    ``clean`` applies, then XML's escapes (``\\r`` too, which a parser would otherwise drop)."""
    parts = []
    for job in jobs:
        run_id = "" if job.run_id is None else f"<uws:runId>{_escape(job.run_id)}</uws:runId>"
        owner = (
            '<uws:ownerId xsi:nil="true"/>'
            if job.owner is None
            else f"<uws:ownerId>{_escape(job.owner)}</uws:ownerId>"
        )
        parts.append(
            f'<uws:jobref id="{_quote(job.id)}" xlink:type="simple" '
            f'xlink:href="{_quote(f"{list_url}/{job.id}")}">'
            f"<uws:phase>{job.phase.value}</uws:phase>{run_id}{owner}"
            f"<uws:creationTime>{iso(job.created_at)}</uws:creationTime></uws:jobref>"
        )
    if not parts:
        return f"{_LIST_HEAD}/>".encode()
    return f"{_LIST_HEAD}>{''.join(parts)}</uws:jobs>".encode()


def job_lists(jobtypes: Iterable[tuple[JobType, str]]) -> bytes:
    """The index at ``/uws``: ``<jm:jobLists>`` (namespace ``urn:jobmill``; UWS defines no such
    document), one ``jobList`` per job type with its URL, description, declared parameters and
    results, so a UWS client can tell what to post where."""
    root = etree.Element(f"{{{JOBMILL_NS}}}jobLists", nsmap={"jm": JOBMILL_NS, "xlink": XLINK_NS})
    for jobtype, url in jobtypes:
        entry = etree.SubElement(root, f"{{{JOBMILL_NS}}}jobList")
        entry.set("name", jobtype.name)
        entry.set(_x("type"), "simple")
        entry.set(_x("href"), url)
        if jobtype.description:
            etree.SubElement(entry, f"{{{JOBMILL_NS}}}description").text = clean(
                jobtype.description
            )
        for name, spec in jobtype.parameters.items():
            param = etree.SubElement(entry, f"{{{JOBMILL_NS}}}parameter")
            param.set("name", name)
            param.set("type", spec.type.value)
            param.set("required", "true" if spec.required else "false")
            if spec.default is not None:
                param.set("default", clean(value_text(spec.default)))
            if spec.description:
                param.text = clean(spec.description)
        for result in jobtype.results:
            element = etree.SubElement(entry, f"{{{JOBMILL_NS}}}result")
            element.set("name", result.name)
            element.set("mime-type", clean(result.content_type))
    return _serialise(root)


def job_document(view: JobView) -> bytes:
    """``<uws:job version="1.1">`` in the schema's element order."""
    job = view.job
    root = _root("job", version=True)
    _text(root, "jobId", job.id, nillable=False)
    _text(root, "runId", job.run_id, nillable=False)
    _text(root, "ownerId", job.owner, nillable=True)
    _text(root, "phase", job.phase.value, nillable=False)
    _text(root, "quote", None, nillable=True)
    _text(root, "creationTime", iso(job.created_at), nillable=False)
    _text(root, "startTime", iso(job.started_at), nillable=True)
    _text(root, "endTime", iso(job.ended_at), nillable=True)
    _text(root, "executionDuration", str(job.execution_duration), nillable=False)
    _text(root, "destruction", iso(job.destruction_at), nillable=True)
    root.append(_parameters(view.parameters))
    root.append(_results(view.results, view.url, view.links))
    if view.error is not None:
        summary = etree.SubElement(root, _u("errorSummary"))
        summary.set("type", "fatal" if view.error.fatal else "transient")
        summary.set("hasDetail", "true")
        _text(summary, "message", view.error.message, nillable=False)
    info = _job_info(job)
    if view.pipeline is not None:
        state, last_event = view.pipeline
        element = etree.SubElement(info, f"{{{JOBMILL_NS}}}pipelinejobs")
        element.set("state", state)
        element.set("last_event", last_event)
    if len(info):
        root.append(info)
    return _serialise(root)


def parameters_document(parameters: Sequence[Param]) -> bytes:
    return _serialise(_parameters(parameters))


def results_document(
    results: Sequence[ResultFile], job_url: str, links: Sequence[Link] = ()
) -> bytes:
    return _serialise(_results(results, job_url, links))


# -- parts --------------------------------------------------------------------------------------


def _parameters(parameters: Sequence[Param]) -> etree._Element:
    root = _root("parameters")
    for param in parameters:
        element = etree.SubElement(root, _u("parameter"))
        element.set("id", clean(param.id))
        if param.by_reference:
            element.set("byReference", "true")
        element.text = clean(param.value)
    return root


def _results(
    results: Sequence[ResultFile], job_url: str, links: Sequence[Link] = ()
) -> etree._Element:
    root = _root("results")
    for result in results:
        if not xml_safe(result.id):
            continue  # a file name XML cannot carry; still listed by the native API
        element = etree.SubElement(root, _u("result"))
        element.set("id", result.id)
        element.set(_x("type"), "simple")
        element.set(_x("href"), f"{job_url}/results/{segment(result.id)}")
        element.set("size", str(result.size))
        element.set("mime-type", clean(result.content_type))
    for link in links:
        element = etree.SubElement(root, _u("result"))
        element.set("id", link.id)
        element.set(_x("type"), "simple")
        element.set(_x("href"), link.href)
        element.set("mime-type", link.content_type)
    return root


def _job_info(job: Job) -> etree._Element:
    """jobmill's own facts in ``jobInfo`` (namespace ``urn:jobmill``): type, why a queued job
    waits, the exit code."""
    info = etree.Element(_u("jobInfo"), nsmap={"jm": JOBMILL_NS})
    etree.SubElement(info, f"{{{JOBMILL_NS}}}type").text = job.type
    if job.phase is Phase.QUEUED and job.reason:
        etree.SubElement(info, f"{{{JOBMILL_NS}}}reason").text = clean(job.reason)
    if job.exit_code is not None:
        etree.SubElement(info, f"{{{JOBMILL_NS}}}exitCode").text = str(job.exit_code)
    # Workflows (docs/workflows.md): the job that created it, the jobs it runs after, the
    # jobs that run after it, its sub-jobs.
    if job.parent_id:
        etree.SubElement(info, f"{{{JOBMILL_NS}}}parent").text = job.parent_id
    for name, ids in (
        ("after", job.after),
        ("dependent", job.dependents),
        ("child", job.children),
    ):
        for linked in ids or ():
            etree.SubElement(info, f"{{{JOBMILL_NS}}}{name}").text = linked
    return info
