"""Announcements between components that must not know each other: one side ``emit``s, the
other ``connect``s a listener. The factory makes a signal before both sides and hands it to
each at construction, so no component is built first only to have a callback put into it
later (the engine announces ended jobs; the rules, built after it, listen)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Signal:
    """Something that happened, for whoever listens (listeners run in the emitting thread and
    must return at once; one that fails is logged and does not stop the others)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._listeners: tuple[Callable[[], None], ...] = ()
        self._lock = threading.Lock()

    def connect(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def emit(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("a listener of '%s' failed", self.name)
