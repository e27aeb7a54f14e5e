"""The data watcher: one thread that releases every job waiting for data (DESIGN rule 5).

It keeps the waiting conditions in memory, indexed by path, and watches the directories their
patterns can match: with inotify on local filesystems, by scanning on network filesystems
(NFS, Lustre, GPFS, ...: detected from the mount table, or listed in ``JOBMILL_SCAN_ROOTS``),
where inotify cannot see writes made by other hosts. It sleeps in ``poll()`` on the inotify
descriptor and a wake-up pipe, so a file is noticed the moment it is closed.

When a file has arrived is decided by ``service.completeness`` (see ``docs/triggers.md``); the
conditions a file counts for are found by ``service.waitindex``, the directories to watch or
scan by ``service.datadirs``.

A condition that holds is released with a checked update (``ConditionStore.release``): only a
job still QUEUED and waiting for data changes, so releases are exactly once even with several
watchers in several jobmill processes. Every ``refresh_interval`` the watcher reloads the set
of waiting jobs from the database, picking up jobs created by other jobmill processes and
dropping jobs aborted, released or deleted elsewhere.

File rules (``service.rules``) use the same watcher through ``listen``: a ``FileListener`` is
indexed like a waiting condition, hears of every complete file its patterns match (those
already there first), and is never released or dropped by the reload.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from jobmill.domain.conditions import MARKER_SUFFIX, WaitingCondition
from jobmill.service import inotify
from jobmill.service.completeness import Rule, Track, Tracker, rule_for
from jobmill.service.datadirs import DirectoryPlanner, watch_spec
from jobmill.service.failures import FailureLog
from jobmill.service.waitindex import FileListener, Wait, WaitIndex, new_wait
from jobmill.service.worker import Worker
from jobmill.storage.conditions import ConditionStore

log = logging.getLogger(__name__)
ACTOR = "jobmill:data"
RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class WatchSettings:
    """How the watcher watches (from ``Settings``)."""

    scan_roots: tuple[str, ...] = ()
    scan_interval: float = 2.0
    stable_seconds: float = 0.0
    refresh_interval: float = 2.0
    use_inotify: bool = True


class DataWatcher(Worker):
    """Watches for the data of every waiting job, in one thread."""

    thread_name = "jobmill-datawatch"

    def __init__(
        self,
        store: ConditionStore,
        settings: WatchSettings,
        *,
        on_released: Callable[[list[str]], None] = lambda ids: None,
    ) -> None:
        super().__init__()
        self.store = store
        self.settings = settings
        self.on_released = on_released
        self.dirs = DirectoryPlanner(settings.scan_roots)
        self.index = WaitIndex()
        self.tracker = Tracker()
        self._deadlines: list[tuple[float, str]] = []
        self._to_release: dict[str, str] = {}
        self._retry_at = 0.0
        self._watched: dict[str, int] = {}
        self._wd_dirs: dict[int, set[str]] = {}
        self._scanned: set[str] = set()
        self._replan = False
        self._inbox: deque[tuple[str, object]] = deque()
        self._ino: inotify.Inotify | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._loaded = threading.Event()
        self._next_scan = 0.0
        self._next_refresh = 0.0
        self.releases = 0
        self._release_failures = FailureLog(log, "releasing jobs waiting for data")
        self._looked: set[str] = set()  # directories looked into since a condition was added
        self.cpu_seconds = 0.0
        """CPU time the watcher thread spent working (not sleeping): see ``stats``."""

    # -- control from other threads ---------------------------------------------------------

    def _opening(self) -> None:
        if self.settings.use_inotify:
            try:
                self._ino = inotify.Inotify()
            except (OSError, AttributeError) as exc:
                log.warning("inotify is not available (%s): scanning every data directory", exc)

    def _interrupt(self) -> None:
        self._wake()

    def _closing(self) -> None:
        """Release the watcher's descriptors."""
        if self._ino is not None:
            self._ino.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def add(self, conditions: Iterable[WaitingCondition]) -> None:
        """Start watching for these conditions (jobs just created or run)."""
        items = list(conditions)
        if items:
            self._inbox.append(("add", items))
            self._wake()

    def listen(self, listener: FileListener) -> None:
        """Hand every complete file matching the listener's patterns to it, starting with the
        files already there (``unlisten`` with its key stops it)."""
        self._inbox.append(("listen", listener))
        self._wake()

    def unlisten(self, key: str) -> None:
        self.forget([key])

    def forget(self, job_ids: Iterable[str]) -> None:
        """Stop watching for these jobs (released by hand, aborted...)."""
        ids = list(job_ids)
        if ids:
            self._inbox.append(("forget", ids))
            self._wake()

    def wait_loaded(self, timeout: float = 30.0) -> bool:
        """Block until the start-up pass (load and check every waiting condition) is done."""
        return self._loaded.wait(timeout)

    def knows(self, job_id: str) -> bool:
        return job_id in self.index

    def stats(self) -> dict[str, int]:
        return {
            "waiting": len(self.index),
            "watched_dirs": len(self._watched),
            "scanned_dirs": len(self._scanned),
            "tracked_files": len(self.tracker),
            "released": self.releases,
            "cpu_ms": round(self.cpu_seconds * 1000),
        }

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        started = time.thread_time()
        try:
            self._refresh(initial=True)
        except Exception:  # pragma: no cover - logged; the loop retries at the next refresh
            log.exception("loading the waiting jobs failed")
        finally:
            self.cpu_seconds += time.thread_time() - started
            self._loaded.set()
        failures = FailureLog(log, "data watcher cycle")
        while not self._stop.is_set():
            try:
                self._cycle()
            except Exception as exc:  # a bug, or the database away: must not stop the watcher
                self._stop.wait(failures.failed(exc))
            else:
                failures.succeeded()

    def _cycle(self) -> None:
        now = time.monotonic()
        wake_at = min(self._next_refresh, self._next_scan if self._scanned else now + 3600)
        if (due := self.tracker.next_due()) is not None:
            wake_at = min(wake_at, due)
        if self._deadlines:
            wake_at = min(wake_at, now + self._deadlines[0][0] - time.time())
        if self._to_release:
            wake_at = min(wake_at, self._retry_at)
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._ino is not None:
            poller.register(self._ino.fd, select.POLLIN)
        ready = poller.poll(max(0.0, wake_at - now) * 1000)
        for fd, _mask in ready:
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
        if self._stop.is_set():
            return
        started = time.thread_time()
        try:
            self._work(ready)
        finally:
            self.cpu_seconds += time.thread_time() - started

    def _work(self, ready: list[tuple[int, int]]) -> None:
        """One cycle's work, after ``poll`` said something happened or is due."""
        fresh = self._drain_inbox()
        if self._ino is not None and any(fd == self._ino.fd for fd, _ in ready):
            self._read_events()
        if self._replan:
            self._plan()
        if fresh:
            self._look_at(fresh)
        now = time.monotonic()
        if self._scanned and now >= self._next_scan:
            self._next_scan = now + self.settings.scan_interval
            self._scan()
        self._check_tracks(now)
        self._check_deadlines()
        if now >= self._next_refresh:
            self._refresh()
        self._flush()

    def _drain_inbox(self) -> list[Wait]:
        fresh: list[Wait] = []
        while self._inbox:
            what, payload = self._inbox.popleft()
            if what == "add":
                for item in payload:  # type: ignore[attr-defined]
                    wait = self._index(item)
                    if wait is not None:
                        fresh.append(wait)
            elif what == "listen":
                listener: FileListener = payload  # type: ignore[assignment]
                item = WaitingCondition(listener.key, listener.condition, None, datetime.now(UTC))
                wait = self._index(item)
                if wait is not None:
                    wait.listener = listener
                    fresh.append(wait)
            else:
                for job_id in payload:  # type: ignore[attr-defined]
                    self._unindex(job_id)
        return fresh

    # -- the in-memory index ----------------------------------------------------------------

    def _index(self, item: WaitingCondition) -> Wait | None:
        if item.job_id in self.index or item.job_id in self._to_release:
            return None
        wait = new_wait(item, default_stable=self.settings.stable_seconds, now=time.monotonic())
        if self.index.add(wait):
            self._replan = True
        self._looked.clear()  # what was looked at before did not look for this one
        if wait.deadline is not None:
            heapq.heappush(self._deadlines, (wait.deadline, wait.job_id))
        return wait

    def _unindex(self, job_id: str) -> None:
        if self.index.remove(job_id):
            self._replan = True

    # -- which directories to watch or scan -------------------------------------------------

    def _plan(self) -> None:
        """Watch (or scan) every directory a waiting pattern can match, or the nearest existing
        ancestor of a missing one; look into directories that are new to the plan.

        A directory created between reading the tree and adding the watch on its parent sent
        its ``IN_CREATE`` before that watch existed: the tree is read again after the watches
        are in place, and the plan made again while it changed."""
        self._replan = False
        wanted = self.dirs.wanted(self.index.specs)
        for _ in range(8):
            self._plan_for(wanted)
            again = self.dirs.wanted(self.index.specs)
            if again == wanted:
                return
            wanted = again
        self._replan = True  # a tree still changing: once more at the next cycle

    def _plan_for(self, wanted: set[str]) -> None:
        for directory in list(self._watched):
            if directory not in wanted:
                self._unwatch(directory)
        self._scanned &= wanted
        new = [d for d in wanted if d not in self._watched and d not in self._scanned]
        for directory in sorted(new):
            if self._ino is not None and not self.dirs.scan_here(directory):
                try:
                    wd = self._ino.add(directory)
                except OSError as exc:
                    log.warning("cannot watch %s (%s): scanning it instead", directory, exc)
                else:
                    self._watched[directory] = wd
                    self._wd_dirs.setdefault(wd, set()).add(directory)
                    self._look_dir(directory, scanned=False)
                    self._looked.add(directory)
                    continue
            self._scanned.add(directory)
            self._look_dir(directory, scanned=True)
            self._looked.add(directory)

    def _unwatch(self, directory: str) -> None:
        wd = self._watched.pop(directory)
        dirs = self._wd_dirs.get(wd)
        if dirs is not None:
            dirs.discard(directory)
            if not dirs:
                del self._wd_dirs[wd]
                if self._ino is not None:
                    self._ino.remove(wd)

    # -- noticing files ---------------------------------------------------------------------

    def _read_events(self) -> None:
        assert self._ino is not None
        for event in self._ino.read():
            mask = event.mask
            if mask & inotify.IN_Q_OVERFLOW:
                log.warning("inotify queue overflowed: looking at every watched directory")
                for directory in list(self._watched):
                    self._look_dir(directory, scanned=False)
                continue
            dirs = self._wd_dirs.get(event.wd)
            if not dirs:
                continue
            if mask & (inotify.IN_IGNORED | inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF):
                if mask & inotify.IN_IGNORED:
                    for directory in self._wd_dirs.pop(event.wd, set()):
                        self._watched.pop(directory, None)
                self._replan = True
                continue
            if mask & inotify.IN_ISDIR:
                if mask & (inotify.IN_CREATE | inotify.IN_MOVED_TO):
                    self._replan = True
                continue
            for directory in dirs:
                path = f"{directory.rstrip('/')}/{event.name}"
                if mask & (inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO):
                    self._observe(path, closed=True, scanned=False)
                elif mask & inotify.IN_CREATE and os.path.islink(path):
                    self._observe(path, closed=True, scanned=False)

    def _look_dir(self, directory: str, *, scanned: bool) -> None:
        """Look at what a directory holds now (a new watch, a scan, an inotify overflow)."""
        try:
            with os.scandir(directory) as entries:
                names = [e.name for e in entries if not e.is_dir(follow_symlinks=True)]
        except OSError:
            return
        prefix = directory.rstrip("/") + "/"
        for name in names:
            self._observe(prefix + name, closed=False, scanned=scanned)

    def _look_at(self, fresh: list[Wait]) -> None:
        """Check new conditions against what is already there."""
        listed = set(self._looked)  # looked at since these conditions came: done already
        expanded: dict[tuple[str, ...], set[str]] = {}  # patterns sharing directories
        listing: dict[str, list[str]] = {}
        for wait in fresh:
            if wait.job_id not in self.index:
                continue
            for pattern in wait.patterns:
                scanned = pattern.dir in self._scanned
                if pattern.kind == "exact":
                    if os.path.lexists(pattern.text):
                        self._observe(pattern.text, closed=False, scanned=scanned)
                    continue
                spec = watch_spec(pattern.parts[:-1])
                if pattern.kind == "name":
                    directories: Iterable[str] = [pattern.dir]
                elif spec in expanded:
                    directories = expanded[spec]
                else:
                    directories = expanded[spec] = self.dirs.expand(spec, listing)
                for directory in directories:
                    if directory not in listed:
                        listed.add(directory)
                        self._look_dir(directory, scanned=directory in self._scanned)

    def _scan(self) -> None:
        self._plan()
        for directory in list(self._scanned):
            self._look_dir(directory, scanned=True)

    def _observe(self, path: str, *, closed: bool, scanned: bool) -> None:
        """A file was closed (``closed``) or found: count it for the conditions it matches."""
        if path.endswith(MARKER_SUFFIX):
            target = path[: -len(MARKER_SUFFIX)]
            for wait, i in self.index.candidates(target):
                if wait.condition.marker and not wait.arrived[i] and os.path.exists(target):
                    self._arrive(wait, i, target)
        candidates = self.index.candidates(path)
        if not candidates:
            return
        need_track = False
        for wait, i in candidates:
            if wait.arrived[i] or wait.job_id not in self.index:
                continue
            if wait.listener is not None and not wait.listener.wanted(path):
                continue
            rule = rule_for(
                marker=wait.condition.marker, closed=closed, scanned=scanned, stable=wait.stable
            )
            if rule is Rule.MARKER:
                if os.path.exists(path + MARKER_SUFFIX) and os.path.exists(path):
                    self._arrive(wait, i, path)
            elif rule is Rule.CLOSED:
                if os.path.exists(path):
                    self._arrive(wait, i, path)
            else:
                need_track = True
        if need_track:
            self._track(path, closed=closed, scanned=scanned)

    def _track(self, path: str, *, closed: bool, scanned: bool) -> None:
        try:
            st = os.stat(path)
        except OSError:
            self.tracker.gone(path)
            return
        now = time.monotonic()
        track = self.tracker.seen(
            path,
            st.st_size,
            st.st_mtime_ns,
            closed=closed,
            scanned=scanned,
            now=now,
            wall=time.time(),
        )
        self._settle(path, track, now)

    def _settle(self, path: str, track: Track, now: float) -> None:
        """Count the file for every condition it has been quiet long enough for."""
        needs = [
            ((wait, i), wait.stable)
            for wait, i in self.index.candidates(path)
            if not wait.arrived[i] and not wait.condition.marker
        ]
        for wait, i in self.tracker.settle(path, track, now, needs):
            self._arrive(wait, i, path)

    def _check_tracks(self, now: float) -> None:
        while (due := self.tracker.pop_due(now)) is not None:
            path, track = due
            try:
                st = os.stat(path)
            except OSError:
                self.tracker.gone(path)
                continue
            self.tracker.looked_again(track, st.st_size, st.st_mtime_ns, now)
            self._settle(path, track, now)

    def _arrive(self, wait: Wait, i: int, path: str) -> None:
        if wait.listener is not None:  # listeners hear of every file and never complete
            if wait.listener.wanted(path):
                wait.listener.arrived(path)
            return
        wait.arrived[i] = True
        if wait.condition.holds(wait.arrived):
            self._unindex(wait.job_id)
            self._to_release[wait.job_id] = path

    # -- time-outs, releases, the database --------------------------------------------------

    def _check_deadlines(self) -> None:
        now = time.time()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, job_id = heapq.heappop(self._deadlines)
            wait = self.index.get(job_id)
            if wait is None or wait.deadline != deadline:
                continue
            self._unindex(job_id)
            try:
                if self.store.time_out(job_id, actor=ACTOR):
                    log.info("job %s timed out waiting for data", job_id)
            except Exception:
                log.exception("timing out job %s failed; retrying", job_id)
                self._index_again(wait, deadline + RETRY_SECONDS)

    def _index_again(self, wait: Wait, deadline: float | None) -> None:
        item = WaitingCondition(
            wait.job_id,
            wait.condition,
            datetime.fromtimestamp(deadline, UTC) if deadline else None,
            datetime.now(UTC),
        )
        self._index(item)

    def _flush(self) -> None:
        if not self._to_release or time.monotonic() < self._retry_at:
            return
        batch = dict(self._to_release)
        try:
            released = self.store.release(batch, actor=ACTOR)
        except Exception as exc:
            pause = self._release_failures.failed(exc)
            self._retry_at = time.monotonic() + max(RETRY_SECONDS, pause)
            return
        self._release_failures.succeeded()
        for job_id in batch:
            self._to_release.pop(job_id, None)
        if released:
            self.releases += len(released)
            log.info("released %d job(s) waiting for data", len(released))
            self.on_released(released)

    def _refresh(self, *, initial: bool = False) -> None:
        """Align the in-memory conditions with the database (other processes, restarts)."""
        started = time.monotonic()
        self._next_refresh = started + self.settings.refresh_interval
        ids = self.store.waiting_ids()
        gone = [
            j
            for j, w in self.index.waits.items()
            if j not in ids and w.added < started and w.listener is None
        ]
        for job_id in gone:
            self._unindex(job_id)
        missing = [j for j in ids if j not in self.index and j not in self._to_release]
        if not missing:
            return
        loaded = self.store.waiting(missing)
        now = datetime.now(UTC)
        deadlines = {}
        for item in loaded:
            if item.deadline is None and item.condition.timeout is not None:
                item.deadline = now + timedelta(seconds=item.condition.timeout)
                deadlines[item.job_id] = item.deadline
        if deadlines:
            self.store.set_deadlines(deadlines)
        fresh = [w for w in (self._index(item) for item in loaded) if w is not None]
        if self._replan:
            self._plan()
        self._look_at(fresh)
        if initial:
            log.info(
                "data watcher: %d job(s) waiting, %d directories watched, %d scanned",
                len(self.index),
                len(self._watched),
                len(self._scanned),
            )
