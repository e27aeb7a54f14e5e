"""Who a web request comes from, and the checks a form post must pass.

A page request is answered for:

* the bearer token in ``Authorization``, as on every face (programs, tests);
* else the browser's session cookie (``session.py``, in the database: any process of the site
  knows it), whose token row is checked again on every request (a revoked token ends the
  session);
* else, where ``JOBMILL_ANONYMOUS=read`` allows it, an anonymous reader (GET and HEAD only);
* else nobody: pages send the browser to the sign-in form.

A form post of a session must carry the session's CSRF token (``csrf`` field); a post with a
bearer token needs none (a web page cannot make a browser send that header).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from jobmill.api.auth import ANONYMOUS, READ_METHODS, Authenticator
from jobmill.domain.errors import Forbidden
from jobmill.domain.users import User
from jobmill.web.session import COOKIE, Session, Sessions, same


class SignInNeeded(Exception):
    """The page needs a signed-in user: the browser is sent to the sign-in form."""


@dataclass
class Viewer:
    """The user of a web request (None: nobody signed in) and their session, if any."""

    user: User | None
    session: Session | None = None
    bearer: bool = False

    @property
    def csrf(self) -> str:
        return self.session.csrf if self.session is not None else ""

    @property
    def signed_in(self) -> bool:
        return self.user is not None and not self.user.reader

    @property
    def name(self) -> str:
        return self.user.name if self.user is not None else ""


def sessions_of(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.web_sessions
    return sessions


async def viewer(request: Request) -> Viewer:
    """FastAPI dependency: who asks (never refuses; pages decide with ``reader``)."""
    auth: Authenticator = request.app.state.auth
    header = request.headers.get("authorization")
    if header and header.strip():
        return Viewer(auth.user(header, request.method), bearer=True)  # a bad token: 401
    cookie = request.cookies.get(COOKIE)
    if cookie:
        # The session's row and its token row, read off the event loop; a revoked or expired
        # token ends the session (and the other sessions of that token).
        found = await run_in_threadpool(sessions_of(request).resolve, cookie)
        if found is not None:
            return Viewer(found[1], found[0])
    if auth.anonymous_reads and request.method.upper() in READ_METHODS:
        return Viewer(User(ANONYMOUS, reader=True))
    return Viewer(None)


def reader(who: Viewer) -> User:
    """The user a page is read for; nobody: sign in first."""
    if who.user is None:
        raise SignInNeeded
    return who.user


def writer(who: Viewer, csrf: str | None) -> User:
    """The user a form post acts for: signed in, and the post carries the session's token."""
    if who.user is None or who.user.reader:
        raise SignInNeeded
    if who.session is not None and not same(who.session.csrf, csrf):
        raise Forbidden(
            "the form's CSRF token is missing or stale; reload the page and try again",
            field="csrf",
        )
    return who.user


def check_form_token(expected: str | None, given: str | None) -> None:
    """The sign-in form's own double-submit token (cookie and field agree)."""
    if not same(expected, given):
        raise Forbidden(
            "the sign-in form's CSRF token is missing or stale; reload the page", field="csrf"
        )
