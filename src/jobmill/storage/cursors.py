"""Named positions in the events table, shared by every jobmill process (``rule_cursors``).

A reader of the events (job rules, the PipelineJobs watcher) keeps how far it has read under its
own name. The first read creates the cursor at the current end of the events: a reader does not
act on what happened before it existed. ``advance`` only moves forward, so two processes that
read the same range cannot move it back.
"""

from __future__ import annotations

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from jobmill.storage.tables import events, rule_cursors


class EventCursor:
    """One named cursor over the events table."""

    def __init__(self, engine: Engine, read_engine: Engine, name: str) -> None:
        self.engine = engine
        self.read_engine = read_engine
        self.name = name
        self._read = select(rule_cursors.c.seq).where(rule_cursors.c.name == name)

    def get(self) -> int:
        """How far the events were read; created at their current end the first time."""
        with self.read_engine.connect() as conn:
            seq = conn.execute(self._read).scalar()
        if seq is not None:
            return int(seq)
        last = self.last_event()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(rule_cursors).values(name=self.name, seq=last))
        except IntegrityError:  # another process created it first
            return self.get()
        return last

    def advance(self, seq: int) -> None:
        """Move the cursor forward to ``seq`` (never back)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(rule_cursors)
                .where(rule_cursors.c.name == self.name, rule_cursors.c.seq < seq)
                .values(seq=seq)
            )

    def last_event(self) -> int:
        """The sequence number of the newest event (0 when there is none)."""
        with self.read_engine.connect() as conn:
            return int(conn.execute(select(func.max(events.c.seq))).scalar() or 0)
