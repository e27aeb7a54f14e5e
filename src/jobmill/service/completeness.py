"""When a file the data watcher noticed counts as arrived (``docs/triggers.md``). No thread and
no filesystem here: the watcher passes what it saw (a close, a look, sizes and times).

* with ``marker: true``: when ``<file>.done`` exists beside it (and it exists);
* closed by its writer (``IN_CLOSE_WRITE``) or renamed into place in a watched directory: at
  once, or with ``stable_seconds`` > 0 once its size and mtime then stay unchanged that long;
* found by looking (a scan, a new watch, a new condition): once its size and mtime have been
  unchanged for ``max(stable_seconds, PRESENT_SETTLE)``. On a scanned directory that is judged
  by two looks, never by the mtime's age, because the clocks of file servers differ; on a
  local filesystem the mtime says how long the file has been quiet already.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

PRESENT_SETTLE = 1.0
"""Seconds a file found by looking (not by its close) must stay unchanged to count."""

T = TypeVar("T")


class Rule(Enum):
    """How a file is judged complete for one condition."""

    MARKER = "marker"  # when its marker file exists
    CLOSED = "closed"  # now: closed by its writer, no stability asked
    QUIET = "quiet"  # once unchanged long enough: tracked


def rule_for(*, marker: bool, closed: bool, scanned: bool, stable: float) -> Rule:
    """How a file just closed (``closed``) or found, in a scanned directory or not, is judged
    for a condition with ``marker`` and ``stable`` seconds."""
    if marker:
        return Rule.MARKER
    if closed and not scanned and stable <= 0:
        return Rule.CLOSED
    return Rule.QUIET


def quiet_needed(stable: float, closed: bool) -> float:
    """Seconds a file must stay unchanged: ``stable`` after a close, at least
    ``PRESENT_SETTLE`` for a file found by looking."""
    return stable if closed else max(stable, PRESENT_SETTLE)


@dataclass(slots=True)
class Track:
    """A file seen but not yet complete: its last size/mtime and since when they are unchanged."""

    size: int
    mtime: int
    since: float  # monotonic
    closed: bool  # a close (or rename into place) was seen since the last change
    scanned: bool
    due: float = 0.0


class Tracker:
    """The files seen but not complete yet, and when to look at each again."""

    def __init__(self) -> None:
        self.tracks: dict[str, Track] = {}
        self._due: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self.tracks)

    def seen(
        self,
        path: str,
        size: int,
        mtime_ns: int,
        *,
        closed: bool,
        scanned: bool,
        now: float,
        wall: float,
    ) -> Track:
        """Record a look at ``path`` (``now`` monotonic, ``wall`` epoch seconds): a new or
        changed file starts its quiet time now, or, found on a local filesystem, when its mtime
        says it last changed; an unchanged one keeps it (and remembers a close)."""
        track = self.tracks.get(path)
        if track is None or (track.size, track.mtime) != (size, mtime_ns):
            if closed or scanned:
                since = now
            else:  # found on a local filesystem: its mtime says how long it has been quiet
                since = now - max(0.0, wall - mtime_ns / 1e9)
            track = Track(size, mtime_ns, since, closed, scanned)
            self.tracks[path] = track
        elif closed:
            track.closed = True
        return track

    def looked_again(self, track: Track, size: int, mtime_ns: int, now: float) -> None:
        """A due look at a tracked file: a change starts its quiet time again."""
        if (size, mtime_ns) != (track.size, track.mtime):
            track.size, track.mtime, track.since = size, mtime_ns, now
            track.closed = False

    def gone(self, path: str) -> None:
        """``path`` cannot be looked at (removed): stop tracking it."""
        self.tracks.pop(path, None)

    def settle(self, path: str, track: Track, now: float, needs: list[tuple[T, float]]) -> list[T]:
        """Of ``needs`` (what waits for the file, with its ``stable`` seconds), those the file
        has been quiet long enough for; the others get a look when they will have been. The
        file is no longer tracked when none remains."""
        quiet = now - track.since
        ready: list[T] = []
        next_due = None
        for item, stable in needs:
            need = quiet_needed(stable, track.closed)
            if quiet >= need:
                ready.append(item)
            else:
                due = track.since + need
                next_due = due if next_due is None else min(next_due, due)
        if next_due is None:
            self.tracks.pop(path, None)
        elif next_due != track.due:
            track.due = next_due
            heapq.heappush(self._due, (next_due, path))
        return ready

    def next_due(self) -> float | None:
        """When the next look is due (monotonic), if any."""
        return self._due[0][0] if self._due else None

    def pop_due(self, now: float) -> tuple[str, Track] | None:
        """The next file whose look is due at ``now`` (None when none is)."""
        while self._due and self._due[0][0] <= now:
            due, path = heapq.heappop(self._due)
            track = self.tracks.get(path)
            if track is not None and track.due == due:
                return path, track
        return None
