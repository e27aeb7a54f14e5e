"""Who is calling: a bearer token, or (bound to loopback only) the single local user."""

from __future__ import annotations

import time

from fastapi import Request

from jobmill.domain.errors import Unauthorized
from jobmill.service.jobs import User
from jobmill.storage.jobs import JobStore, hash_secret

CACHE_SECONDS = 10.0


class Authenticator:
    """Resolves the ``Authorization`` header to a user; caches token look-ups briefly."""

    def __init__(self, store: JobStore, *, local_user: str, loopback: bool) -> None:
        self.store = store
        self.local = User(local_user, admin=True) if loopback else None
        self._cache: dict[str, tuple[float, User | None]] = {}

    def user(self, authorization: str | None) -> User:
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            user = self._lookup(credentials.strip())
            if user is None:
                raise Unauthorized("invalid or revoked token", field="Authorization")
            return user
        # Anything else (no header, empty Basic credentials...) is anonymous: the local user
        # when bound to loopback, nobody otherwise.
        if self.local is not None:
            return self.local
        raise Unauthorized("a bearer token is required", field="Authorization")

    def _lookup(self, secret: str) -> User | None:
        key = hash_secret(secret)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = self.store.find_token(secret)
        user = User(record.user, record.admin) if record else None
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[key] = (now + CACHE_SECONDS, user)
        return user


async def current_user(request: Request) -> User:
    """FastAPI dependency: the caller, or 401.

    Async, so resolving the caller costs no thread hop; a token look-up that misses the
    short cache is one indexed query.
    """
    auth: Authenticator = request.app.state.auth
    return auth.user(request.headers.get("authorization"))
