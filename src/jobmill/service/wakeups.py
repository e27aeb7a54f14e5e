"""Jobs queued in one process wake the engine of another at once (PostgreSQL).

The job service calls ``queued`` after it queued jobs: it wakes this process's engine and, on
PostgreSQL, has a ``NOTIFY`` sent from a thread of its own (many creations in a burst share
one). Started (in a process that runs the engine: ``serve``, ``jobmill engine``), the worker
listens and wakes the engine on each announcement. Without it, or on SQLite, the engine's
claim query every poll interval finds those jobs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from jobmill.service.worker import Worker
from jobmill.storage.wakeups import Wakeups

log = logging.getLogger(__name__)


class QueuedWakeups(Worker):
    thread_name = "jobmill-wakeups"

    def __init__(self, channel: Wakeups, wake_engine: Callable[[], None]) -> None:
        super().__init__()
        self.channel = channel
        self.wake_engine = wake_engine
        self._pending = threading.Event()
        self._lock = threading.Lock()
        self._announcer: threading.Thread | None = None

    def queued(self) -> None:
        """Jobs were queued in this process."""
        self.wake_engine()
        if not self.channel.supported or self.closed:
            return
        self._pending.set()
        if self._announcer is None:
            with self._lock:
                if self._announcer is None:
                    self._announcer = threading.Thread(
                        target=self._announce, name="jobmill-announce", daemon=True
                    )
                    self._announcer.start()

    def _announce(self) -> None:
        while not self._stop.is_set():
            if not self._pending.wait(0.5) or self._stop.is_set():
                continue
            self._pending.clear()
            try:
                self.channel.notify()
            except Exception as exc:  # noqa: BLE001 - the claim query still finds the jobs
                log.warning("could not announce queued jobs: %s", exc)
                self._stop.wait(1.0)

    def _run(self) -> None:
        if self.channel.supported:
            self.channel.listen(self.wake_engine, self._stop)

    def _interrupt(self) -> None:
        self._pending.set()  # the announcer sees the stop at once

    def _closing(self) -> None:
        if self._announcer is not None:
            self._announcer.join(5)
