"""Who is looking at a page: sign-in sessions, one-time sign-in links and CSRF tokens.

A person signs in with a token (the same bearer tokens as every face, docs/security.md). The
browser then holds only a session cookie: a random id (256 bits). The database
(``storage.web_sessions``) keeps the id's SHA-256 and the id of the token row the session was
opened with, never the token nor the cookie, so every process of a site (``jobmill serve
--workers``, ``jobmill api``) knows the session and it outlives a restart. The token itself is
never put in a cookie, a page or a URL. The cookie is ``HttpOnly`` and ``SameSite=Strict``;
every request of a session checks its token row again through the token service, so a revoked
or expired token ends the session within the service's short cache time.

The session's CSRF token is derived from its id (an HMAC keyed by the id): every process
computes the same token from the cookie and nothing of it is stored.

``jobmill serve`` prints a one-time sign-in link for the user who starts it (like Jupyter's):
opening it signs the browser in with the local credential and the link stops working. The
database keeps the SHA-256 of the link's code and its token row; redeeming deletes the row, so
the link works once across all processes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from jobmill.domain.users import User
from jobmill.service.tokens import TokenService

COOKIE = "jobmill_session"
PRE_COOKIE = "jobmill_signin"  # the CSRF token of the sign-in form itself (double submit)
SESSION_SECONDS = 12 * 3600
LINK_SECONDS = 24 * 3600
MAX_SESSIONS = 10_000
MAX_ID = 128  # longer cookies are not ours (ids are 43 characters)
PURGE_EVERY = 60.0  # seconds between two purges of expired rows by one process


def csrf_for(session_id: str) -> str:
    """The CSRF token of a session: an HMAC of a fixed label keyed by the session's id."""
    mac = hmac.new(session_id.encode(), b"jobmill web csrf", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


@dataclass
class Session:
    """One signed-in browser."""

    id: str
    token_id: int
    csrf: str
    expires: float  # seconds since the epoch
    user: str = ""


class Sessions:
    """The sessions of a site and its unused one-time sign-in links (in the database)."""

    def __init__(self, tokens: TokenService, lifetime: float = SESSION_SECONDS) -> None:
        self.tokens = tokens
        self.store = tokens.web_sessions()
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._purged = 0.0

    def open(self, token: str, user: str) -> Session | None:
        """A new session for a token already checked (None: it is no longer active)."""
        record = self.tokens.store.find(token)
        return self.open_for(record.id, user) if record is not None else None

    def open_for(self, token_id: int, user: str) -> Session:
        """A new session for the active token row ``token_id``."""
        now = time.time()
        self._purge(now)
        session_id = secrets.token_urlsafe(32)
        expires = now + self.lifetime
        self.store.add(session_id, token_id, user, now=now, expires_at=expires)
        return Session(session_id, token_id, csrf_for(session_id), expires, user)

    def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > MAX_ID:
            return None
        found = self.store.get(session_id, now=time.time())
        if found is None:
            return None
        return Session(
            session_id, found.token_id, csrf_for(session_id), found.expires_at, found.user
        )

    def resolve(self, session_id: str | None) -> tuple[Session, User] | None:
        """The session of a cookie and the user of its token, if both are still valid; a
        session whose token was revoked or has expired ends here."""
        session = self.get(session_id)
        if session is None:
            return None
        user = self.tokens.user_for_id(session.token_id)
        if user is None:
            self.store.remove_of_token(session.token_id)
            return None
        return session, user

    def close(self, session_id: str | None) -> None:
        if session_id and len(session_id) <= MAX_ID:
            self.store.remove(session_id)

    def count(self) -> int:
        return self.store.count(now=time.time())

    def _purge(self, now: float) -> None:
        """Now and then (``PURGE_EVERY``), delete expired rows and trim to ``MAX_SESSIONS``."""
        with self._lock:
            if now - self._purged < PURGE_EVERY:
                return
            self._purged = now
        self.store.purge(now=now)
        self.store.trim(MAX_SESSIONS)

    # -- one-time links -----------------------------------------------------------------------

    def issue_link(self, token: str, lifetime: float = LINK_SECONDS) -> str:
        """A one-time code that signs a browser in with ``token`` (``/ui/signin?once=CODE``);
        ValueError if the token is not active."""
        record = self.tokens.store.find(token)
        if record is None:
            raise ValueError("a sign-in link needs an active token")
        now = time.time()
        self._purge(now)
        code = secrets.token_urlsafe(32)
        self.store.add_link(code, record.id, expires_at=now + lifetime)
        return code

    def redeem_link(self, code: str) -> int | None:
        """The token row of an unused, unexpired code; the code is then used up (in every
        process: of two requests with one code, one wins)."""
        if not code or len(code) > MAX_ID:
            return None
        return self.store.redeem_link(code, now=time.time())


def same(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of two CSRF tokens (a missing one never matches)."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
