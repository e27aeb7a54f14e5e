"""Users' bearer tokens: who a token names (checked briefly cached), and their lifecycle."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

from jobmill.domain.jobs import utcnow
from jobmill.domain.users import User
from jobmill.service.credentials import ensure_local_token
from jobmill.storage.tokens import TokenRecord, TokenStore, hash_secret
from jobmill.storage.web_sessions import WebSessionStore

# A token checked once is trusted this long without asking the database again: a revoked or
# expired token stops working within this many seconds (docs/security.md).
CACHE_SECONDS = 10.0
CACHE_ENTRIES = 10_000


class TokenService:
    """Resolves secrets to users for the faces, and creates, lists and revokes tokens.

    Administrators are the users of admin tokens and the users named in ``admins``.
    """

    def __init__(self, store: TokenStore, *, admins: Iterable[str] = ()) -> None:
        self.store = store
        self.admins = frozenset(admins)
        self._cache: dict[str, tuple[float, User | None]] = {}
        self._by_id: dict[int, tuple[float, User | None]] = {}

    def user_for(self, secret: str) -> User | None:
        """The user an active token names, or None. Look-ups are cached for ``CACHE_SECONDS``
        (never past the token's expiry); a look-up that reaches the database records the
        token's last use (at most once a minute, ``TokenStore.touch``)."""
        key = hash_secret(secret)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = self.store.find(secret)
        user = None
        until = now + CACHE_SECONDS
        if record is not None:
            user = User(record.user, admin=record.admin or record.user in self.admins)
            self.store.touch(record.id)
            if record.expires_at is not None:
                left = record.expires_at.timestamp() - time.time()
                until = min(until, now + max(0.0, left))
        if len(self._cache) > CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = (until, user)
        return user

    def user_for_id(self, token_id: int) -> User | None:
        """The user of the token row ``token_id`` while it is active, or None: what a web
        session (which names its token by id, never holds it) checks on every request. Cached
        like ``user_for``; a look-up that reaches the database records the token's use."""
        now = time.monotonic()
        cached = self._by_id.get(token_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = self.store.get(token_id)
        user = None
        until = now + CACHE_SECONDS
        if record is not None and record.state() == "active":
            user = User(record.user, admin=record.admin or record.user in self.admins)
            self.store.touch(record.id)
            if record.expires_at is not None:
                left = record.expires_at.timestamp() - time.time()
                until = min(until, now + max(0.0, left))
        if len(self._by_id) > CACHE_ENTRIES:
            self._by_id.clear()
        self._by_id[token_id] = (until, user)
        return user

    def create(
        self,
        user: str,
        *,
        admin: bool = False,
        note: str | None = None,
        lifetime: timedelta | None = None,
    ) -> tuple[str, TokenRecord]:
        """A new random token (256 bits): the secret, shown once, and its stored record."""
        secret = secrets.token_urlsafe(32)
        expires_at = utcnow() + lifetime if lifetime is not None else None
        self.store.add(user, secret, admin=admin, note=note, expires_at=expires_at)
        record = self.store.lookup(secret)
        assert record is not None
        return secret, record

    def list(self, user: str | None = None, *, include_inactive: bool = False) -> list[TokenRecord]:
        return self.store.list(user, include_inactive=include_inactive)

    def revoke(self, token_id: int) -> TokenRecord:
        return self.store.revoke(token_id)

    def web_sessions(self) -> WebSessionStore:
        """The web pages' sessions and one-time sign-in links, in the tokens' database
        (``web/session.py``)."""
        return WebSessionStore(self.store.engine, self.store.read_engine)

    def ensure_local(self, user: str, path: Path) -> str:
        """The server's own user's local credential (``service/credentials.py``)."""
        return ensure_local_token(self.store, user, path)
