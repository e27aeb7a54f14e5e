"""TokenStore: users' bearer tokens (hashes only), their expiry, revocation and last use."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, and_, insert, or_, select, update

from jobmill.domain.errors import NotFound
from jobmill.domain.jobs import utcnow
from jobmill.storage.db import aware
from jobmill.storage.tables import tokens


def hash_secret(secret: str) -> str:
    """Tokens are stored as SHA-256 hex digests, never in clear."""
    return hashlib.sha256(secret.encode()).hexdigest()


# A token's last use is written at most this often (a request must not cost a write).
TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class TokenRecord:
    """A user's bearer token as stored: never the secret, only its hash."""

    id: int
    user: str
    admin: bool
    created_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    note: str | None = None

    def state(self, now: datetime | None = None) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"


def _record(row: Row[Any]) -> TokenRecord:
    m = row._mapping
    return TokenRecord(
        id=m["id"],
        user=m["user"],
        admin=bool(m["admin"]),
        created_at=aware(m["created_at"]),
        expires_at=aware(m["expires_at"]),
        revoked_at=aware(m["revoked_at"]),
        last_used_at=aware(m["last_used_at"]),
        note=m["note"],
    )


class TokenStore:
    """The ``tokens`` table: create, find (active only), list, revoke, touch."""

    def __init__(self, engine: Engine, read_engine: Engine | None = None) -> None:
        self.engine = engine
        self.read_engine = read_engine or engine

    def add(
        self,
        user: str,
        secret: str,
        *,
        admin: bool,
        note: str | None = None,
        expires_at: datetime | None = None,
    ) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(tokens)
                .values(
                    user=user,
                    token_hash=hash_secret(secret),
                    admin=admin,
                    created_at=utcnow(),
                    expires_at=expires_at,
                    note=note,
                )
                .returning(tokens.c.id)
            )
            return int(result.scalar_one())

    def lookup(self, secret: str) -> TokenRecord | None:
        """The token with this secret, whatever its state (None: never issued here)."""
        with self.read_engine.connect() as conn:
            row = conn.execute(
                select(tokens).where(tokens.c.token_hash == hash_secret(secret))
            ).first()
        return _record(row) if row else None

    def get(self, token_id: int) -> TokenRecord | None:
        """The token row ``token_id``, whatever its state (None: no such row)."""
        with self.read_engine.connect() as conn:
            row = conn.execute(select(tokens).where(tokens.c.id == token_id)).first()
        return _record(row) if row else None

    def find(self, secret: str) -> TokenRecord | None:
        """The token with this secret if it is active (not revoked, not expired)."""
        record = self.lookup(secret)
        return record if record is not None and record.state() == "active" else None

    def list(self, user: str | None = None, *, include_inactive: bool = False) -> list[TokenRecord]:
        query = select(tokens).order_by(tokens.c.id)
        if user is not None:
            query = query.where(tokens.c.user == user)
        if not include_inactive:
            now = utcnow()
            query = query.where(
                and_(
                    tokens.c.revoked_at.is_(None),
                    or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > now),
                )
            )
        with self.read_engine.connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    def revoke(self, token_id: int, *, user: str | None = None) -> TokenRecord:
        """Revoke one token (``user``: only if it is theirs). Revoking twice changes nothing."""
        where = tokens.c.id == token_id
        if user is not None:
            where = and_(where, tokens.c.user == user)
        with self.engine.begin() as conn:
            unrevoked = and_(where, tokens.c.revoked_at.is_(None))
            conn.execute(update(tokens).where(unrevoked).values(revoked_at=utcnow()))
            row = conn.execute(select(tokens).where(where)).first()
        if row is None:
            raise NotFound(f"no token {token_id}", field="id")
        return _record(row)

    def touch(self, token_id: int, now: datetime | None = None) -> None:
        """Record a use, unless one was recorded less than ``TOUCH_EVERY`` ago."""
        now = now or utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                update(tokens)
                .where(
                    tokens.c.id == token_id,
                    or_(tokens.c.last_used_at.is_(None), tokens.c.last_used_at < now - TOUCH_EVERY),
                )
                .values(last_used_at=now)
            )

    def has_any(self) -> bool:
        with self.read_engine.connect() as conn:
            query = select(tokens.c.id).where(tokens.c.revoked_at.is_(None)).limit(1)
            return conn.execute(query).first() is not None
