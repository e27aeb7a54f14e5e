"""The ASGI application: every face mounted on one FastAPI app, one error shape for all."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobmill import __version__
from jobmill.api import arp, browser, native, ocps, pipelinejobs, provenance, rules, uws
from jobmill.api.auth import Authenticator
from jobmill.api.responses import openapi_document
from jobmill.domain.errors import JobmillError, http_status, printable
from jobmill.factory import Jobmill
from jobmill.service.feed import ChangeFeed
from jobmill.web import install as install_web

log = logging.getLogger(__name__)


def error_body(exc: JobmillError) -> dict[str, Any]:
    return {"error": exc.to_dict()}


def _field(loc: tuple[Any, ...]) -> str:
    field = ""
    for part in loc:
        if isinstance(part, int):  # a list index, as the services write it: jobs[0].type
            field += f"[{part}]"
        elif part not in ("body", "query", "path", "header"):
            field += f".{part}" if field else str(part)
    return printable(field or "body")


def create_app(jobmill: Jobmill, *, start_engine: bool = True, warm_up: bool = False) -> FastAPI:
    """The app for a built jobmill; the lifespan starts and stops its background components.

    ``warm_up`` prepares every route at start-up (``_warm_up``): what a server process wants,
    and what tests, which build many short-lived apps, do not."""

    feed = ChangeFeed(jobmill.store)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if start_engine:
            jobmill.start()
        await feed.start()
        if warm_up:
            await _warm_up(_app)
        try:
            yield
        finally:
            await feed.stop()
            if start_engine:
                jobmill.stop()  # everything it started: engine, watcher, rules

    app = FastAPI(
        title="jobmill",
        version=__version__,
        description="A job manager for scientific data pipelines.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from the web face, with packaged assets
        redoc_url=None,
    )
    app.state.jobmill = jobmill
    app.state.feed = feed  # wakes UWS WAIT requests on phase changes (service/feed.py)
    app.state.auth = Authenticator(jobmill.tokens, anonymous=jobmill.settings.anonymous)

    @app.exception_handler(JobmillError)
    async def _jobmill_error(_request: Request, exc: JobmillError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=http_status(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = _field(tuple(first.get("loc", ())))
        message = printable(f"{field}: {first.get('msg', 'invalid')}")
        return JSONResponse(
            {"error": {"code": "invalid", "message": message, "field": field}}, status_code=422
        )

    # Defence in depth: the services refuse what cannot be stored or encoded (domain/values.py)
    # before storing it; should such a value slip through, the caller still gets a 4xx.
    @app.exception_handler(UnicodeError)
    @app.exception_handler(OverflowError)
    async def _unstorable(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s: unchecked input reached %s", request.method, request.url.path,
                  type(exc).__name__, exc_info=exc)  # fmt: skip
        if isinstance(exc, OverflowError):
            message = "the request holds a number out of range"
        else:
            message = "the request holds text that is not valid Unicode"
        return JSONResponse(
            {"error": {"code": "invalid", "message": message, "field": "body"}}, status_code=422
        )

    # A URL no route matches, a method it does not take, a body FastAPI cannot parse: the same
    # error shape as every other answer (plain text under /uws, as every UWS error).
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        message = printable(str(exc.detail))
        if request.url.path == "/uws" or request.url.path.startswith("/uws/"):
            return PlainTextResponse(message, status_code=exc.status_code, headers=exc.headers)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return JSONResponse(
            {"error": {"code": code, "message": message}},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    app.openapi = partial(openapi_document, app)  # type: ignore[method-assign]

    @app.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        """``ok``, or 503 ``degraded`` when the disk has less free space than jobs need
        (``disk``: free bytes under the home against ``JOBMILL_MIN_FREE``)."""
        jobmill.store.ping()
        body: dict[str, Any] = {"status": "ok", "version": __version__}
        space = jobmill.jobs.space
        if space is not None:
            body["disk"] = disk = space.status()
            if not disk["ok"]:
                body.update(status="degraded", message=space.message(disk["free"]))
                return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    app.include_router(native.router)
    app.include_router(pipelinejobs.router)
    app.include_router(ocps.make_router(jobmill.settings.ocps_basepath))
    app.include_router(provenance.router)
    app.include_router(uws.router)
    app.include_router(uws.provsap_router)
    app.include_router(arp.router)
    app.include_router(rules.router)
    install_web(app)  # the pages for people: / and /ui/ (docs/web.md)
    app.add_middleware(
        BodyLimit,
        limit=jobmill.settings.max_request_bytes,
        batch_limit=jobmill.settings.max_batch_request_bytes,
        upload_limit=jobmill.settings.max_upload_bytes,
    )
    app.add_middleware(browser.BrowserGuard, settings=jobmill.settings)  # outside BodyLimit
    return app


class BodyLimit:
    """Refuses request bodies over a limit with 413 (DESIGN rule 10), streamed or not.

    Batch submissions have their own limit, and so have multipart requests to the UWS face (file
    uploads, ``JOBMILL_MAX_UPLOAD``), whose files Starlette spools to temporary files on disk.
    """

    def __init__(
        self, app: ASGIApp, limit: int, batch_limit: int, upload_limit: int | None = None
    ) -> None:
        self.app = app
        self.limit = limit
        self.batch_limit = batch_limit
        self.upload_limit = upload_limit or limit

    def limit_for(self, scope: Scope) -> tuple[int, str]:
        """The body limit of this request, and what sets it (for the 413's message)."""
        path: str = scope["path"]
        if path.endswith("/batch"):
            return self.batch_limit, "the batch limit"
        if path.startswith("/uws/") and scope["method"] == "POST" and _multipart(scope):
            return self.upload_limit, "JOBMILL_MAX_UPLOAD"
        return self.limit, "the request limit"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.limit_for(scope)
        text = scope["path"].startswith("/uws/")  # the UWS face answers errors in plain text
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _too_large(send, limit, setting, text=text)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(send, limit, setting, text=text)


class _TooLarge(Exception):
    pass


def _multipart(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return bool(value.lower().startswith(b"multipart/form-data"))
    return False


async def _warm_up(app: FastAPI) -> None:
    """Build the router's per-route state now rather than in the first request.

    FastAPI prepares each route (its dependencies and pydantic adapters) the first time a request
    is matched against it: about 0.5 s of CPU for jobmill's routes, which the first caller of a
    fresh process would otherwise wait for (several seconds on a loaded machine). A request for
    a path that no route matches walks every route once; it goes to the router directly, so no
    middleware sees it.
    """
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/.jobmill-warm-up",
        "raw_path": b"/.jobmill-warm-up",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": None,
        "server": None,
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: Message) -> None:
        return None

    try:
        await app.router(scope, receive, send)
    except Exception:  # never fatal: the first request then pays the cost itself
        log.debug("warming the routes up failed", exc_info=True)


async def _too_large(send: Send, limit: int, setting: str, *, text: bool = False) -> None:
    message = f"request body over {limit} bytes ({setting})"
    if text:
        body, media = message.encode(), b"text/plain; charset=utf-8"
    else:
        body = (
            b'{"error":{"code":"too_large","message":"' + message.encode() + b'","field":"body"}}'
        )
        media = b"application/json"
    await send(
        {"type": "http.response.start", "status": 413, "headers": [(b"content-type", media)]}
    )
    await send({"type": "http.response.body", "body": body})
