"""WebSessionStore: the web pages' sign-in sessions and one-time sign-in links, in the database
so that every process of a site (``jobmill serve --workers``, ``jobmill api``) shares them and
they outlive a restart.

Nothing stored here signs anyone in: a session row holds the SHA-256 of the cookie's random id
and a link row the SHA-256 of its code, and both name the token row they were opened with, never
a token. Times are seconds since the epoch (the hosts sharing a database agree on the clock).
A link is redeemed by deleting its row (``DELETE ... RETURNING``): of several requests with the
same code, in one process or in several, exactly one gets the row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import Engine, delete, func, insert, select

from jobmill.storage.tables import web_sessions, web_signin_links


def digest(secret: str) -> str:
    """Session ids and link codes are stored as SHA-256 hex digests."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class StoredSession:
    """A session row: whose, opened with which token row, until when."""

    token_id: int
    user: str
    created_at: float
    expires_at: float


class WebSessionStore:
    """The ``web_sessions`` and ``web_signin_links`` tables."""

    def __init__(self, engine: Engine, read_engine: Engine | None = None) -> None:
        self.engine = engine
        self.read_engine = read_engine or engine

    # -- sessions ------------------------------------------------------------------------------

    def add(
        self, session_id: str, token_id: int, user: str, *, now: float, expires_at: float
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(web_sessions).values(
                    id_hash=digest(session_id),
                    token_id=token_id,
                    user=user,
                    created_at=now,
                    expires_at=expires_at,
                )
            )

    def get(self, session_id: str, *, now: float) -> StoredSession | None:
        """The unexpired session with this id, if any."""
        query = select(web_sessions).where(
            web_sessions.c.id_hash == digest(session_id), web_sessions.c.expires_at > now
        )
        with self.read_engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return StoredSession(row.token_id, row.user, row.created_at, row.expires_at)

    def remove(self, session_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(web_sessions).where(web_sessions.c.id_hash == digest(session_id)))

    def remove_of_token(self, token_id: int) -> int:
        """End every session opened with a token (it was revoked or has expired)."""
        with self.engine.begin() as conn:
            result = conn.execute(delete(web_sessions).where(web_sessions.c.token_id == token_id))
        return int(result.rowcount or 0)

    def count(self, *, now: float) -> int:
        query = select(func.count()).select_from(web_sessions)
        with self.read_engine.connect() as conn:
            return int(conn.execute(query.where(web_sessions.c.expires_at > now)).scalar_one())

    def trim(self, keep: int) -> int:
        """Beyond ``keep`` sessions, end the ones closest to their expiry (a flood of sign-ins
        cannot grow the table without bound)."""
        with self.engine.begin() as conn:
            total = int(conn.execute(select(func.count()).select_from(web_sessions)).scalar_one())
            if total <= keep:
                return 0
            oldest = (
                select(web_sessions.c.id_hash)
                .order_by(web_sessions.c.expires_at)
                .limit(total - keep)
                .scalar_subquery()
            )
            result = conn.execute(delete(web_sessions).where(web_sessions.c.id_hash.in_(oldest)))
        return int(result.rowcount or 0)

    # -- one-time links ------------------------------------------------------------------------

    def add_link(self, code: str, token_id: int, *, expires_at: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(web_signin_links).values(
                    code_hash=digest(code), token_id=token_id, expires_at=expires_at
                )
            )

    def redeem_link(self, code: str, *, now: float) -> int | None:
        """The token row of an unused, unexpired code, which is used up: one caller wins."""
        with self.engine.begin() as conn:
            row = conn.execute(
                delete(web_signin_links)
                .where(web_signin_links.c.code_hash == digest(code))
                .returning(web_signin_links.c.token_id, web_signin_links.c.expires_at)
            ).first()
        if row is None or row.expires_at <= now:
            return None
        return int(row.token_id)

    # -- housekeeping --------------------------------------------------------------------------

    def purge(self, *, now: float) -> int:
        """Delete expired sessions and links; how many rows went."""
        with self.engine.begin() as conn:
            gone = conn.execute(delete(web_sessions).where(web_sessions.c.expires_at <= now))
            links = conn.execute(
                delete(web_signin_links).where(web_signin_links.c.expires_at <= now)
            )
        return int(gone.rowcount or 0) + int(links.rowcount or 0)
