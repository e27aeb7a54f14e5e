"""Who is calling: the bearer token the caller holds, never the address the server listens on.

A request without credentials is anonymous: refused (401), or, where the deployment allows it
(``JOBMILL_ANONYMOUS=read``), a reader that may only make GET/HEAD requests. Which token names
which user, and who is an administrator, is the token service's (``service/tokens.py``). See
docs/security.md.
"""

from __future__ import annotations

from fastapi import Request

from jobmill.domain.errors import Unauthorized
from jobmill.service.jobs import User
from jobmill.service.tokens import TokenService

READ_METHODS = frozenset({"GET", "HEAD"})
ANONYMOUS = "anonymous"


class Authenticator:
    """Resolves the ``Authorization`` header to a user."""

    def __init__(self, tokens: TokenService, *, anonymous: str = "none") -> None:
        self.tokens = tokens
        self.anonymous_reads = anonymous == "read"

    def user(self, authorization: str | None, method: str = "GET") -> User:
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            user = self.tokens.user_for(credentials.strip())
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


async def current_user(request: Request) -> User:
    """FastAPI dependency: the caller, or 401.

    Async, so resolving the caller costs no thread hop; a token look-up that misses the
    short cache is one indexed query (and at most one write a minute for its last use).
    """
    auth: Authenticator = request.app.state.auth
    authorization = request.headers.get("authorization")
    try:
        return auth.user(authorization, request.method)
    except Unauthorized:
        # A running job's own token creates its sub-jobs (POST /api/v1/jobs) and nothing else
        # here (it reports through /report): docs/workflows.md.
        scheme, _, secret = (authorization or "").partition(" ")
        if (
            request.method == "POST"
            and request.url.path == SUBJOB_PATH
            and scheme.lower() == "bearer"
            and secret.strip()
        ):
            user = request.app.state.jobmill.jobs.job_token_user(secret.strip())
            if isinstance(user, User):
                return user
        raise


SUBJOB_PATH = "/api/v1/jobs"
"""Where a running job's own token is accepted (beside its report): creating its sub-jobs."""
