"""Signing in and out of the web pages (see ``session.py`` for the model)."""

from __future__ import annotations

import secrets
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from jobmill.api.auth import Authenticator
from jobmill.web.pages import HtmlRoute, ViewerDep, read_form
from jobmill.web.render import page
from jobmill.web.session import COOKIE, PRE_COOKIE, Session
from jobmill.web.viewer import check_form_token, sessions_of, writer

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)
MAX_TOKEN = 512


def local_target(target: str | None) -> str:
    """Where to go after signing in: a path of this server only (never another site)."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or any(c == "\\" or ord(c) < 0x21 or ord(c) == 0x7F for c in target)  # browsers drop tabs
        or urlsplit(target).netloc
    ):
        return "/"
    return target


def _secure(request: Request) -> bool:
    public = request.app.state.jobmill.settings.public_url or ""
    return request.url.scheme == "https" or str(public).startswith("https:")


def _signed_in(request: Request, session: Session, target: str) -> Response:
    answer = RedirectResponse(local_target(target), status_code=303)
    answer.set_cookie(
        COOKIE,
        session.id,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
        max_age=int(sessions_of(request).lifetime),
    )
    answer.delete_cookie(PRE_COOKIE, path="/ui/signin")
    return answer


def _form_page(
    request: Request, target: str, error: str | None = None, status: int = 200
) -> Response:
    form_token = secrets.token_urlsafe(32)
    answer = page(
        "signin.html",
        status,
        who=None,
        form_token=form_token,
        next=local_target(target),
        error=error,
        anonymous=request.app.state.auth.anonymous_reads,
    )
    answer.set_cookie(
        PRE_COOKIE,
        form_token,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/ui/signin",
        max_age=3600,
    )
    return answer


@router.get("/ui/signin")
async def signin_page(
    request: Request,
    target: Annotated[str, Query(alias="next", max_length=2048)] = "/",
    once: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    """The sign-in form; ``once=CODE`` (the link ``jobmill serve`` prints) signs in at once."""
    if once is not None:
        sessions = sessions_of(request)
        token_id = await run_in_threadpool(sessions.redeem_link, once)
        user = None
        if token_id is not None:
            user = await run_in_threadpool(sessions.tokens.user_for_id, token_id)
        if token_id is None or user is None:
            return _form_page(
                request,
                target,
                "this sign-in link was already used or has expired: sign in with a token",
                401,
            )
        session = await run_in_threadpool(sessions.open_for, token_id, user.name)
        return _signed_in(request, session, target)
    return _form_page(request, target)


@router.post("/ui/signin")
async def signin(request: Request) -> Response:
    form = await read_form(request)
    target = form.get("next", "/")
    check_form_token(request.cookies.get(PRE_COOKIE), form.get("csrf"))
    token = form.get("token", "").strip()
    if not token or len(token) > MAX_TOKEN:
        return _form_page(request, target, "enter a token", 422)
    auth: Authenticator = request.app.state.auth
    user = await run_in_threadpool(auth.tokens.user_for, token)
    session = None
    if user is not None:  # the session names the token's row, never the token
        session = await run_in_threadpool(sessions_of(request).open, token, user.name)
    if session is None:
        return _form_page(request, target, "invalid, expired or revoked token", 401)
    return _signed_in(request, session, target)


@router.post("/ui/signout")
async def signout(request: Request, who: ViewerDep) -> Response:
    form = await read_form(request)
    writer(who, form.get("csrf"))
    if who.session is not None:
        await run_in_threadpool(sessions_of(request).close, who.session.id)
    answer = RedirectResponse("/ui/signin", status_code=303)
    answer.delete_cookie(COOKIE, path="/")
    return answer
