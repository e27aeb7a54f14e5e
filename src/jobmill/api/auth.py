"""Who is calling: the bearer token the caller holds, never the address the server listens on.

A request without credentials is anonymous: refused (401), or, where the deployment allows it
(``JOBMILL_ANONYMOUS=read``), a reader that may only make GET/HEAD requests. Administrators are
the users of tokens created with ``--admin`` (the server's own local credential is one) and the
users named in ``JOBMILL_ADMINS``. See docs/security.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from fastapi import Request

from jobmill.domain.errors import Unauthorized
from jobmill.service.jobs import User
from jobmill.storage.tokens import TokenStore, hash_secret

# A token checked once is trusted this long without asking the database again: a revoked or
# expired token stops working within this many seconds (docs/security.md).
CACHE_SECONDS = 10.0
READ_METHODS = frozenset({"GET", "HEAD"})
ANONYMOUS = "anonymous"


class Authenticator:
    """Resolves the ``Authorization`` header to a user; caches token look-ups briefly."""

    def __init__(
        self, tokens: TokenStore, *, admins: Iterable[str] = (), anonymous: str = "none"
    ) -> None:
        self.tokens = tokens
        self.admins = frozenset(admins)
        self.anonymous_reads = anonymous == "read"
        self._cache: dict[str, tuple[float, User | None]] = {}

    def user(self, authorization: str | None, method: str = "GET") -> User:
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            user = self._lookup(credentials.strip())
            if user is None:
                raise Unauthorized("invalid, expired or revoked token", field="Authorization")
            return user
        if self.anonymous_reads and method.upper() in READ_METHODS:
            return User(ANONYMOUS, reader=True)
        raise Unauthorized(
            "a bearer token is required (Authorization: Bearer ...; the server's own user finds "
            "theirs in ~/.config/jobmill/token, others get one from 'jobmill token create')",
            field="Authorization",
        )

    def _lookup(self, secret: str) -> User | None:
        key = hash_secret(secret)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = self.tokens.find(secret)
        user = None
        until = now + CACHE_SECONDS
        if record is not None:
            user = User(record.user, admin=record.admin or record.user in self.admins)
            self.tokens.touch(record.id)
            if record.expires_at is not None:
                left = record.expires_at.timestamp() - time.time()
                until = min(until, now + max(0.0, left))
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[key] = (until, user)
        return user


async def current_user(request: Request) -> User:
    """FastAPI dependency: the caller, or 401.

    Async, so resolving the caller costs no thread hop; a token look-up that misses the
    short cache is one indexed query (and at most one write a minute for its last use).
    """
    auth: Authenticator = request.app.state.auth
    return auth.user(request.headers.get("authorization"), request.method)
