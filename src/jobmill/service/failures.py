"""Repeated failures of a background loop (the engine, the data watcher): logged once with the
traceback, then one line a minute while they go on, with a growing pause between attempts, so
a full disk or a database that is down does not write an error every second."""

from __future__ import annotations

import logging
import time

from jobmill.service.space import disk_full

FIRST_PAUSE = 0.5
MAX_PAUSE = 10.0
REPORT_EVERY = 60.0


class FailureLog:
    """Counts consecutive failures of one loop and decides what to log and how long to wait."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what
        self.failures = 0
        self._next_report = 0.0

    def failed(self, exc: BaseException) -> float:
        """Log ``exc`` as the rules say; return the seconds to pause before trying again."""
        self.failures += 1
        now = time.monotonic()
        hint = " (the disk is full)" if disk_full(exc) else ""
        if self.failures == 1:
            self.log.error("%s failed%s", self.what, hint, exc_info=exc)
            self._next_report = now + REPORT_EVERY
        elif now >= self._next_report:
            self.log.error(
                "%s still failing%s: %d times in a row; last: %s",
                self.what,
                hint,
                self.failures,
                exc,
            )
            self._next_report = now + REPORT_EVERY
        return float(min(MAX_PAUSE, FIRST_PAUSE * 2 ** min(self.failures - 1, 16)))

    def succeeded(self) -> None:
        if self.failures:
            self.log.warning("%s works again after %d failures", self.what, self.failures)
            self.failures = 0
