"""Leases: which process runs the engine of an executor, when several share one database.

A lease is a row of ``engine_leases`` (``name``, ``holder``, ``expires_at`` in seconds since the
epoch). ``take`` takes or renews a set of leases in one write transaction, all or none: each row
goes to ``holder`` only if it is free, already the holder's, expired, or held by one of the
``dead`` holders the caller names. The same statements run on SQLite (the transaction holds the
writer lock) and PostgreSQL (each checked ``UPDATE`` locks its row), so two processes can never
both take a lease. Clocks of the hosts sharing a database must agree to well within a lease's
lifetime.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from jobmill.storage.tables import engine_leases


class _Held(Exception):
    """A lease of the set is another's: the whole set is left as it was."""


@dataclass(frozen=True)
class Held:
    """A lease as stored."""

    name: str
    holder: str
    expires_at: float
    acquired_at: float


class LeaseStore:
    """The rows of ``engine_leases``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def held(self, names: Sequence[str]) -> dict[str, Held]:
        """The stored leases among ``names`` (free ones included, with an empty holder)."""
        query = select(engine_leases).where(engine_leases.c.name.in_(list(names)))
        with self.engine.connect() as conn:
            return {
                row.name: Held(row.name, row.holder, row.expires_at, row.acquired_at)
                for row in conn.execute(query)
            }

    def take(
        self,
        names: Sequence[str],
        holder: str,
        *,
        now: float,
        ttl: float,
        dead: Collection[str] = (),
    ) -> bool:
        """Take or renew every lease of ``names`` for ``ttl`` seconds from ``now``, all or none.
        A lease held by another holder that has not expired is taken only if its holder is in
        ``dead``. True when ``holder`` holds them all."""
        self._ensure(names)
        try:
            self._take(names, holder, now=now, ttl=ttl, dead=dead)
        except _Held:
            return False  # the transaction rolled back: none taken, none renewed
        return True

    def _take(
        self, names: Sequence[str], holder: str, *, now: float, ttl: float, dead: Collection[str]
    ) -> None:
        with self.engine.begin() as conn:
            takeable = [
                engine_leases.c.holder == holder,
                engine_leases.c.holder == "",
                engine_leases.c.expires_at < now,
            ]
            if dead:
                takeable.append(engine_leases.c.holder.in_(sorted(dead)))
            for name in names:
                current = conn.execute(
                    select(engine_leases.c.holder).where(engine_leases.c.name == name)
                ).scalar()
                values: dict[str, object] = {"holder": holder, "expires_at": now + ttl}
                if current != holder:
                    values["acquired_at"] = now
                taken = conn.execute(
                    update(engine_leases)
                    .where(engine_leases.c.name == name, or_(*takeable))
                    .values(**values)
                ).rowcount
                if not taken:
                    raise _Held(name)

    def release(self, names: Sequence[str], holder: str) -> None:
        """Give the leases of ``names`` that ``holder`` holds back at once."""
        with self.engine.begin() as conn:
            conn.execute(
                update(engine_leases)
                .where(engine_leases.c.name.in_(list(names)), engine_leases.c.holder == holder)
                .values(holder="", expires_at=0.0)
            )

    def forget(self, names: Sequence[str]) -> None:
        """Remove the rows (tests, and a site that renames its executors)."""
        with self.engine.begin() as conn:
            conn.execute(delete(engine_leases).where(engine_leases.c.name.in_(list(names))))

    def _ensure(self, names: Sequence[str]) -> None:
        """The row of each lease exists (free), so taking it is an ``UPDATE``."""
        missing = set(names) - set(self.held(names))
        for name in sorted(missing):
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        insert(engine_leases),
                        {"name": name, "holder": "", "expires_at": 0.0, "acquired_at": 0.0},
                    )
            except IntegrityError:
                pass  # another process made it meanwhile
