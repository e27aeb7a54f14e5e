"""One shape for jobmill's background components (the engine, the data watcher, the rules).

Each runs one daemon thread. ``start`` starts it once; ``stop`` stops it, waits for it and
releases what the component holds, and is safe to call any number of times (a stopped
component does not start again). The factory starts them in order and stops them in reverse
(``factory.Jobmill``).
"""

from __future__ import annotations

import threading


class Worker:
    """A component with one background thread; subclasses write ``_run`` (which returns once
    ``_stop`` is set) and, where they need them, ``_opening``, ``_closing`` and ``_interrupt``."""

    thread_name = "jobmill-worker"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def closed(self) -> bool:
        """Whether ``stop`` was called (its resources are released or being released)."""
        return self._closed

    def start(self) -> None:
        if self._thread is not None or self._closed:
            return
        self._opening()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and release the component's resources; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
        self._closing()

    # -- for subclasses ---------------------------------------------------------------------

    def _run(self) -> None:
        raise NotImplementedError

    def _opening(self) -> None:
        """Called by ``start`` before the thread starts."""

    def _interrupt(self) -> None:
        """Called by ``stop`` to wake the thread from whatever it waits on."""

    def _closing(self) -> None:
        """Called by ``stop`` after the thread ended (or the join timed out)."""
