"""Who is looking at a page: sign-in sessions, one-time sign-in links and CSRF tokens.

A person signs in with a token (the same bearer tokens as every face, docs/security.md). The
browser then holds only a session cookie: a random id (256 bits) that names, in this server's
memory, the token it was opened with and the session's CSRF token. The token itself is never
put in a cookie, a page or a URL. The cookie is ``HttpOnly`` and ``SameSite=Strict``; every
request of a session resolves its token again through the token service, so a revoked or
expired token ends the session within the service's short cache time.

``jobmill serve`` prints a one-time sign-in link for the user who starts it (like Jupyter's):
opening it signs the browser in with the local credential and the link stops working.
Sessions live in memory: they end when the server stops.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

COOKIE = "jobmill_session"
PRE_COOKIE = "jobmill_signin"  # the CSRF token of the sign-in form itself (double submit)
SESSION_SECONDS = 12 * 3600
LINK_SECONDS = 24 * 3600
MAX_SESSIONS = 10_000


@dataclass
class Session:
    """One signed-in browser."""

    id: str
    token: str
    csrf: str
    expires: float
    user: str = ""


@dataclass
class Sessions:
    """The sessions of this server and its unused one-time sign-in links."""

    lifetime: float = SESSION_SECONDS
    _sessions: dict[str, Session] = field(default_factory=dict)
    _links: dict[str, tuple[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, token: str, user: str) -> Session:
        """A new session for a token already checked."""
        now = time.monotonic()
        session = Session(
            id=secrets.token_urlsafe(32),
            token=token,
            csrf=secrets.token_urlsafe(32),
            expires=now + self.lifetime,
            user=user,
        )
        with self._lock:
            self._expire(now)
            if len(self._sessions) >= MAX_SESSIONS:  # the oldest make room
                oldest = sorted(self._sessions.values(), key=lambda s: s.expires)
                for old in oldest[: len(oldest) // 10 + 1]:
                    del self._sessions[old.id]
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires < time.monotonic():
                del self._sessions[session_id]
                return None
            return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(session_id, None)

    def count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[key]

    # -- one-time links -----------------------------------------------------------------------

    def issue_link(self, token: str, lifetime: float = LINK_SECONDS) -> str:
        """A one-time code that signs a browser in with ``token`` (``/ui/signin?once=CODE``)."""
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._links[code] = (token, time.monotonic() + lifetime)
        return code

    def redeem_link(self, code: str) -> str | None:
        """The token of an unused, unexpired code; the code is then used up."""
        with self._lock:
            found = None
            for known in list(self._links):
                if hmac.compare_digest(known.encode(), code.encode()):
                    found = known
            if found is None:
                return None
            token, expires = self._links.pop(found)
        return token if expires >= time.monotonic() else None


def same(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of two CSRF tokens (a missing one never matches)."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
