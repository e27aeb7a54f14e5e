"""What the data watcher waits for, indexed by path: every pattern of every waiting condition
(and of every file listener), so a file finds the conditions it counts for without testing
them all. No thread and no filesystem here: ``service.datawatch`` feeds it.

A pattern is ``exact`` (no wildcard: looked up by its path), ``name`` (wildcards in the file
name only: looked up by its directory, then its name tested) or ``deep`` (a wildcard in a
directory, ``**`` included: its directory part is tested once per directory, then the name).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from jobmill.domain.conditions import (
    DataCondition,
    WaitingCondition,
    has_magic,
    join,
    literal_prefix,
    matcher,
    parts,
)

Key = tuple[str, int]
"""A job id (or listener key) and the index of one of its patterns."""


@dataclass(frozen=True)
class FileListener:
    """Someone other than a waiting job who wants to hear of every complete file matching
    ``condition.paths`` (a file rule, see ``service.rules``), by the same completeness rules.

    ``wanted(path)`` says whether the file still matters (False once it was handled), so a
    scanned directory does not hand over the same file at every scan; ``arrived(path)`` is
    called in the watcher's thread and must return at once.
    """

    key: str
    condition: DataCondition
    wanted: Callable[[str], bool]
    arrived: Callable[[str], None]


@dataclass(slots=True)
class Pattern:
    text: str
    parts: tuple[str, ...]
    dir: str  # the literal directory (for exact and name patterns)
    name: str
    kind: str  # "exact" | "name" (wildcards in the file name only) | "deep"
    start: str = "/"  # the literal directory a "deep" pattern starts from, with a final "/"
    match_dir: Callable[[tuple[str, ...]], bool] | None = None  # "deep": its directories


@dataclass(slots=True)
class Wait:
    """One waiting condition (or listener) and which of its patterns have arrived."""

    job_id: str
    condition: DataCondition
    patterns: list[Pattern]
    arrived: list[bool]
    stable: float
    deadline: float | None  # epoch seconds
    added: float  # monotonic
    listener: FileListener | None = None


def pattern(text: str) -> Pattern:
    """``text`` (an absolute path pattern) classified for the index."""
    components = parts(text)
    directory, name = components[:-1], components[-1]
    if literal_prefix(directory) != directory:
        kind = "deep"
    elif has_magic(name):
        kind = "name"
    else:
        kind = "exact"
    start = join(literal_prefix(directory)).rstrip("/") + "/"
    match_dir = matcher(directory) if kind == "deep" else None
    return Pattern(text, components, join(directory), name, kind, start, match_dir)


def new_wait(item: WaitingCondition, *, default_stable: float, now: float) -> Wait:
    """The wait for ``item``: its patterns, none arrived yet; ``default_stable`` seconds of
    stability unless the condition says otherwise (``now`` is monotonic)."""
    condition = item.condition
    stable = condition.stable_seconds
    return Wait(
        job_id=item.job_id,
        condition=condition,
        patterns=[pattern(p) for p in condition.paths],
        arrived=[False] * len(condition.paths),
        stable=default_stable if stable is None else stable,
        deadline=item.deadline.timestamp() if item.deadline else None,
        added=now,
    )


class WaitIndex:
    """The waits by job id, and their patterns by path, directory, or wildcard directory.

    ``specs`` counts the directory parts of the patterns: the directories to watch are made
    from them (``DirectoryPlanner.wanted``), so ``add`` and ``remove`` say when they changed.
    """

    def __init__(self) -> None:
        self.waits: dict[str, Wait] = {}
        self.specs: Counter[tuple[str, ...]] = Counter()
        self._exact: dict[str, set[Key]] = {}
        self._by_dir: dict[str, set[Key]] = {}
        self._deep: set[Key] = set()  # patterns with wildcards in a directory
        # The deep patterns whose directory part matches the directory last asked about: the
        # files of one directory are looked at together, and tested by their names only.
        self._deep_here: tuple[str | None, list[Key]] = (None, [])

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.waits

    def __len__(self) -> int:
        return len(self.waits)

    def get(self, job_id: str) -> Wait | None:
        return self.waits.get(job_id)

    def add(self, wait: Wait) -> bool:
        """Index ``wait`` (replacing none: its id must be new). True when it brings a pattern
        directory no other wait has (the directories to watch change)."""
        self.waits[wait.job_id] = wait
        replan = False
        for i, pattern in enumerate(wait.patterns):
            key = (wait.job_id, i)
            if pattern.kind == "exact":
                self._exact.setdefault(pattern.text, set()).add(key)
            elif pattern.kind == "name":
                self._by_dir.setdefault(pattern.dir, set()).add(key)
            else:
                self._deep.add(key)
                self._deep_here = (None, [])
            spec = pattern.parts[:-1]
            self.specs[spec] += 1
            if self.specs[spec] == 1:
                replan = True
        return replan

    def remove(self, job_id: str) -> bool:
        """Forget the wait of ``job_id`` (if any). True when a pattern directory no other wait
        has goes with it (the directories to watch change)."""
        wait = self.waits.pop(job_id, None)
        if wait is None:
            return False
        replan = False
        for i, pattern in enumerate(wait.patterns):
            key = (job_id, i)
            table: dict[str, set[Key]] | None = None
            if pattern.kind == "exact":
                table, slot = self._exact, pattern.text
            elif pattern.kind == "name":
                table, slot = self._by_dir, pattern.dir
            else:
                self._deep.discard(key)
                self._deep_here = (None, [])
            index = table.get(slot) if table is not None else None
            if table is not None and index is not None:
                index.discard(key)
                if not index:
                    del table[slot]
            spec = pattern.parts[:-1]
            self.specs[spec] -= 1
            if self.specs[spec] <= 0:
                del self.specs[spec]
                replan = True
        return replan

    def candidates(self, path: str) -> list[tuple[Wait, int]]:
        """The waits and pattern indexes ``path`` matches."""
        found: list[tuple[Wait, int]] = []
        for job_id, i in self._exact.get(path, ()):
            found.append((self.waits[job_id], i))
        directory, _, name = path.rpartition("/")
        for job_id, i in self._by_dir.get(directory or "/", ()):
            wait = self.waits[job_id]
            if fnmatchcase(name, wait.patterns[i].name):
                found.append((wait, i))
        if self._deep:
            for job_id, i in self._deep_in(directory or "/"):
                wait = self.waits[job_id]
                if fnmatchcase(name, wait.patterns[i].name):
                    found.append((wait, i))
        return found

    def _deep_in(self, directory: str) -> list[Key]:
        """The deep patterns whose directory part matches ``directory`` (remembered for the
        next file of the same directory)."""
        last, keys = self._deep_here
        if last == directory:
            return keys
        keys = []
        components = parts(directory)
        prefix = directory.rstrip("/") + "/"
        for key in self._deep:
            pattern = self.waits[key[0]].patterns[key[1]]
            if prefix.startswith(pattern.start) and pattern.match_dir is not None:
                if pattern.match_dir(components):
                    keys.append(key)
        self._deep_here = (directory, keys)
        return keys
