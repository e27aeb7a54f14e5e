"""Live parts of the pages: Server-Sent Events that send a page's parts again when they change.

A stream renders the same parts as its page (``_parts.html``), through the same services, and
sends each part whose HTML changed as a ``fragment`` event (``{"id", "html", "v"}``; ``prepend``
names the list a new row goes on top of). It then waits on the change feed
(``service/feed.py``) for a phase change of a job it shows, or at most ``PERIOD`` seconds
(counters and log lines are not phase changes). A job page's stream also sends new log text
(``log`` events) and ends (``end``) a little after the job has ended. A stream lasts at most
``LIFETIME`` seconds; the browser's ``EventSource`` then opens a new one. Without JavaScript
pages simply do not update: reloading shows the same parts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from jobmill.domain.errors import NotFound
from jobmill.domain.lifecycle import TERMINAL, Phase
from jobmill.domain.values import INT_MAX
from jobmill.service.feed import ChangeFeed
from jobmill.web.pages import (
    LOG_TAIL,
    HtmlRoute,
    ViewerDep,
    _experiments,
    _jobs,
    grid,
    job_view,
    list_jobs,
)
from jobmill.web.render import dom_key, part, version_of
from jobmill.web.viewer import reader

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)
PERIOD = 1.0
LIFETIME = 300.0
MAX_STREAMS = 200
ENDED_PASSES = 2
UTF8_LEADS = (
    (0xE0, 0xC0, 2),
    (0xF0, 0xE0, 3),
    (0xF8, 0xF0, 4),
)  # (mask, lead, bytes)  # passes after a job ended (its last log lines), then ``end``


def event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def fragment(dom_id: str, html: str, prepend: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"id": dom_id, "html": html, "v": version_of_stamped(html)}
    if prepend:
        data["prepend"] = prepend
    return data


def version_of_stamped(html: str) -> str:
    """The ``data-v`` a stamped part carries (or the hash of one without)."""
    marker = ' data-v="'
    start = html.find(marker)
    if start < 0:
        return version_of(html)
    start += len(marker)
    return html[start : html.find('"', start)]


def whole_characters(data: bytes) -> bytes:
    """``data`` less a UTF-8 character cut at its end (it comes whole with the next read)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: its character starts further back
        need = next((n for mask, lead, n in UTF8_LEADS if byte & mask == lead), 1)
        return data[:-back] if back < need else data
    return data


async def changed(feed: ChangeFeed, watched: dict[str, Phase], timeout: float) -> None:
    """Until one of ``watched`` leaves the phase shown, or ``timeout``."""
    if not watched:
        await asyncio.sleep(timeout)
        return
    tasks = [asyncio.create_task(feed.wait(i, p, timeout)) for i, p in watched.items()]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _open(request: Request) -> bool:
    state = request.app.state
    count = getattr(state, "web_streams", 0)
    if count >= MAX_STREAMS:
        return False
    state.web_streams = count + 1
    return True


def _close(request: Request) -> None:
    request.app.state.web_streams = max(0, getattr(request.app.state, "web_streams", 1) - 1)


def sse(request: Request, passes: Callable[[], AsyncIterator[str]]) -> Response:
    """The stream of ``passes``, bounded in number and lifetime."""
    if not _open(request):
        return PlainTextResponse("too many live pages open; reload later", status_code=503)

    async def body() -> AsyncIterator[str]:
        deadline = time.monotonic() + LIFETIME
        try:
            yield "retry: 2000\n\n"
            async for chunk in passes():
                yield chunk
                if time.monotonic() > deadline or await request.is_disconnected():
                    break
        finally:
            _close(request)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/ui/live/jobs")
def live_jobs(request: Request, who: ViewerDep) -> Response:
    """The job list's rows: changed rows, and new jobs on top of the first page."""
    user = reader(who)
    params = dict(request.query_params)
    jobs = _jobs(request)
    feed: ChangeFeed = request.app.state.feed
    first_page = not params.get("cursor")
    list_jobs(jobs, user, params, limit=1)  # a bad filter is refused now, not in the stream

    async def passes() -> AsyncIterator[str]:
        shown: dict[str, str] = {}
        while True:
            rows, _, _ = await run_in_threadpool(list_jobs, jobs, user, params)
            out = []
            for row in reversed(rows):  # oldest first, so new rows end up newest on top
                html = str(part("job_row", row))
                v = version_of_stamped(html)
                if shown.get(row["id"]) != v:
                    prepend = "job-rows" if first_page and row["id"] not in shown else None
                    out.append(event("fragment", fragment("job-" + row["id"], html, prepend)))
                    shown[row["id"]] = v
            yield "".join(out) or ": idle\n\n"
            watched = {
                r["id"]: Phase(r["phase"]) for r in rows if Phase(r["phase"]) not in TERMINAL
            }
            await changed(feed, watched, PERIOD)

    return sse(request, passes)


JOB_PARTS = (
    ("job-status", "job_status"),
    ("job-counters", "job_counters"),
    ("job-timeline", "job_timeline"),
    ("job-results", "job_results"),
)


@router.get("/ui/live/jobs/{job_id}")
def live_job(
    request: Request,
    job_id: str,
    who: ViewerDep,
    stdout: Annotated[int, Query(ge=0, le=INT_MAX)] = 0,
    stderr: Annotated[int, Query(ge=0, le=INT_MAX)] = 0,
) -> Response:
    """A job page's parts and its logs' new text, until a little after the job ended."""
    user = reader(who)
    jobs = _jobs(request)
    job = jobs.get(user, job_id)  # 404 now rather than in the stream
    feed: ChangeFeed = request.app.state.feed
    csrf = who.csrf

    def read(stream: str, offset: int) -> bytes:
        chunk = jobs.read_log(user, job.id, stream, offset=offset, limit=LOG_TAIL)
        if not chunk.exists:
            return b""
        return whole_characters(chunk.text)

    async def passes() -> AsyncIterator[str]:
        offsets = {"stdout": stdout, "stderr": stderr}
        shown: dict[str, str] = {}
        ended = 0
        while True:
            try:
                view = await run_in_threadpool(job_view, request, user, job.id)
            except NotFound:
                yield event("end", {"reason": "the job was deleted"})
                return
            out = []
            for dom_id, macro in (*JOB_PARTS, ("job-actions", "job_actions")):
                args: tuple[Any, ...] = (
                    (view, csrf, who.signed_in) if macro == "job_actions" else (view,)
                )
                html = str(part(macro, *args))
                v = version_of_stamped(html)
                if shown.get(dom_id) != v:
                    out.append(event("fragment", fragment(dom_id, html)))
                    shown[dom_id] = v
            for stream, offset in offsets.items():
                data = await run_in_threadpool(read, stream, offset)
                if data:
                    offsets[stream] = offset + len(data)
                    text = data.decode("utf-8", "replace")
                    out.append(event("log", {"stream": stream, "text": text}))
            yield "".join(out) or ": idle\n\n"
            phase = Phase(view["job"]["phase"])
            if phase in TERMINAL:
                ended += 1
                if ended > ENDED_PASSES:
                    yield event("end", {"reason": f"the job is {phase.value}"})
                    return
            await changed(feed, {} if phase in TERMINAL else {job.id: phase}, PERIOD)

    return sse(request, passes)


@router.get("/ui/live/experiments/{experiment}")
def live_grid(
    request: Request,
    experiment: str,
    who: ViewerDep,
    before: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
) -> Response:
    """The run grid's cells and summary (the whole table when runs or definitions change)."""
    user = reader(who)
    svc = _experiments(request)
    feed: ChangeFeed = request.app.state.feed
    csrf = who.csrf
    grid(svc, user, experiment, before)  # a bad experiment name is refused now

    async def passes() -> AsyncIterator[str]:
        shown: dict[str, str] = {}
        shape: tuple[Any, ...] | None = None
        while True:
            view = await run_in_threadpool(grid, svc, user, experiment, before)
            now = (tuple(r.run for r in view["runs"]), tuple(d.name for d in view["definitions"]))
            parts: list[tuple[str, str]] = []
            if shape is not None and now != shape:
                shown.clear()
                parts.append(("grid", str(part("grid_table", view, csrf, who.signed_in))))
            else:
                for run in view["runs"]:
                    for definition in view["definitions"]:
                        cell = view["cells"].get((run.run, definition.name))
                        html = str(
                            part("grid_cell", view, run, definition, cell, csrf, who.signed_in)
                        )
                        parts.append((f"cell-{run.run}-{dom_key(definition.name)}", html))
            shape = now
            parts.append(("grid-summary", str(part("grid_summary", view))))
            out = []
            for dom_id, html in parts:
                v = version_of_stamped(html)
                if shown.get(dom_id) != v:
                    out.append(event("fragment", fragment(dom_id, html)))
                    shown[dom_id] = v
            yield "".join(out) or ": idle\n\n"
            watched = {
                c["job"]["id"]: Phase(c["job"]["phase"])
                for c in view["cells"].values()
                if not c["terminal"]
            }
            await changed(feed, watched, PERIOD)

    return sse(request, passes)
