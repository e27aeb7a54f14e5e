"""Wake-ups between processes on one PostgreSQL database: ``NOTIFY`` when jobs were queued,
``LISTEN`` in the engine's process. SQLite has no such channel (``supported`` is False); there
the engine's periodic claim query finds jobs queued by other processes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

CHANNEL = "jobmill_queued"
STOP_CHECK = 0.1
"""How often (seconds) a listener looks up from its socket to see whether it should stop: the
longest a stop waits for it (a select on one idle socket, nothing sent to the server)."""


class Wakeups:
    """The wake-up channel of one database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def supported(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def notify(self) -> None:
        """Announce queued jobs to every listening process (delivered once this commits)."""
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})

    def listen(self, on_notify: Callable[[], None], stop: threading.Event) -> None:
        """Call ``on_notify`` for each notification until ``stop`` is set, on a connection of
        its own (opened again after a failure)."""
        import psycopg

        url = make_url(self.engine.url).set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        while not stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    on_notify()  # anything queued while no connection listened
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=STOP_CHECK):
                            on_notify()
            except psycopg.Error:
                stop.wait(1.0)
