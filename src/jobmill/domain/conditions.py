"""Data conditions: what a job waiting for data waits for, and how paths match patterns.

A condition is one or more absolute paths or glob patterns, ``all`` or ``any`` of which must
have arrived, an optional time-out, whether a ``<file>.done`` marker announces each file, and
how long a file must stay unchanged to count (``stable_seconds``; ``None`` means the server's
default). The watcher (``service.datawatch``) decides *when* a file has arrived; this module
only says which paths a pattern matches and which directories can lead to a match.

Patterns use ``fnmatch`` rules per path component (``*``, ``?``, ``[...]``; a leading ``.`` is
not special) and ``**`` as a whole component for any number of directories, including none.
"""

from __future__ import annotations

import fnmatch
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from fnmatch import fnmatchcase
from pathlib import PurePosixPath
from typing import Any

from jobmill.domain.errors import ValidationError

MODES = ("all", "any")
MAX_PATHS = 1000
MAX_PATH_LENGTH = 4096
MAX_TIMEOUT = 366 * 86400
MARKER_SUFFIX = ".done"
PLACEHOLDERS = ("{job_id}", "{job_hex}")
_MAGIC = frozenset("*?[")


@dataclass(frozen=True)
class DataCondition:
    """What a job waits for before it may run."""

    paths: tuple[str, ...]
    mode: str = "all"
    timeout: float | None = None
    marker: bool = False
    stable_seconds: float | None = None
    key: str | None = field(default=None, repr=False)
    """A secret that releases the job by hand (OCPS ``monitor/complete``); stored hashed."""

    def holds(self, arrived: list[bool]) -> bool:
        return any(arrived) if self.mode == "any" else all(arrived)


def has_magic(text: str) -> bool:
    return any(c in _MAGIC for c in text)


def parts(path: str) -> tuple[str, ...]:
    """The components of an absolute path, without the root."""
    return PurePosixPath(path).parts[1:]


def join(components: tuple[str, ...]) -> str:
    return "/" + "/".join(components)


def matches(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Whether ``path`` (components) matches ``pattern`` (components, ``**`` allowed)."""
    if not pattern:
        return not path
    head = pattern[0]
    if head == "**":
        return any(matches(pattern[1:], path[i:]) for i in range(len(path) + 1))
    if not path:
        return False
    if head == path[0] or (has_magic(head) and fnmatchcase(path[0], head)):
        return matches(pattern[1:], path[1:])
    return False


def matcher(pattern: tuple[str, ...]) -> Callable[[tuple[str, ...]], bool]:
    """``matches`` for one pattern, compiled: each component's test made once, and the path
    read once, left to right, keeping the set of pattern positions it can be at (so two
    ``**`` cost O(path x pattern), not a search over every way to split the path)."""
    tests: list[Callable[[str], Any] | None] = []  # None: '**'
    for component in pattern:
        if component == "**":
            tests.append(None)
        elif has_magic(component):
            tests.append(re.compile(fnmatch.translate(component)).match)
        else:
            tests.append(component.__eq__)
    size = len(tests)
    closure: list[frozenset[int]] = []  # positions reachable by letting '**' match nothing
    for k in range(size + 1):
        reach = {k}
        while k < size and tests[k] is None:
            k += 1
            reach.add(k)
        closure.append(frozenset(reach))

    def match(path: tuple[str, ...]) -> bool:
        states = closure[0]
        for component in path:
            following: set[int] = set()
            for k in states:
                if k == size:
                    continue
                test = tests[k]
                if test is None:
                    following |= closure[k]
                elif test(component):
                    following |= closure[k + 1]
            if not following:
                return False
            states = frozenset(following)
        return size in states

    return match


def collapse(pattern: tuple[str, ...]) -> tuple[str, ...]:
    """``pattern`` with runs of ``**`` components made one (they match the same paths)."""
    out: list[str] = []
    for component in pattern:
        if component == "**" and out and out[-1] == "**":
            continue
        out.append(component)
    return tuple(out)


def recursive(pattern: str) -> int:
    """How many ``**`` components the (resolved) pattern has."""
    return sum(1 for component in parts(pattern) if component == "**")


def literal_prefix(pattern: tuple[str, ...]) -> tuple[str, ...]:
    """The leading components without wildcards."""
    for i, component in enumerate(pattern):
        if has_magic(component):
            return pattern[:i]
    return pattern


def substitute(text: str, job_id: str) -> str:
    """Replace ``{job_id}`` (dashed UUID) and ``{job_hex}`` (32 hex digits) in a path."""
    if "{" not in text:
        return text
    return text.replace("{job_id}", job_id).replace("{job_hex}", uuid.UUID(job_id).hex)


def resolve(condition: DataCondition, job_id: str, root: str, *, field: str) -> DataCondition:
    """Check a condition and make its paths absolute (relative ones against ``root``).

    Raises ``ValidationError`` naming the offending field (``<field>.paths[3]``...).
    """
    if condition.mode not in MODES:
        raise ValidationError("must be 'all' or 'any'", field=f"{field}.mode")
    if not condition.paths:
        raise ValidationError("at least one path is needed", field=f"{field}.paths")
    if len(condition.paths) > MAX_PATHS:
        raise ValidationError(f"at most {MAX_PATHS} paths", field=f"{field}.paths")
    timeout = condition.timeout
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:
        raise ValidationError(
            f"must be between 0 and {MAX_TIMEOUT} seconds", field=f"{field}.timeout"
        )
    stable = condition.stable_seconds
    if stable is not None and not 0 <= stable <= 86400:
        raise ValidationError("must be between 0 and 86400", field=f"{field}.stable_seconds")
    resolved = []
    for i, raw in enumerate(condition.paths):
        where = f"{field}.paths[{i}]"
        if not isinstance(raw, str) or not raw.strip():
            raise ValidationError("must be a non-empty path", field=where)
        if "\x00" in raw or len(raw) > MAX_PATH_LENGTH:
            raise ValidationError(f"not a path (NUL or over {MAX_PATH_LENGTH} chars)", field=where)
        text = substitute(raw, job_id)
        if not text.startswith("/"):
            text = os.path.join(root, text)
        text = os.path.normpath(text)
        if text.startswith("//"):
            text = "/" + text.lstrip("/")
        components = parts(text)
        if not components:
            raise ValidationError("names the root directory, not a file", field=where)
        if any("**" in c and c != "**" for c in components):
            raise ValidationError("'**' must be a whole path component", field=where)
        if components[-1] == "**":
            raise ValidationError("must end with a file name or pattern, not '**'", field=where)
        collapsed = collapse(components)
        if collapsed != components:  # "a/**/**/b" matches what "a/**/b" matches
            text = join(collapsed)
        resolved.append(text)
    return replace(condition, paths=tuple(dict.fromkeys(resolved)), timeout=timeout)


@dataclass
class WaitingCondition:
    """A stored condition of a job that is (or was) waiting for data."""

    job_id: str
    condition: DataCondition
    deadline: datetime | None
    created_at: datetime
    released_at: datetime | None = None
    released_by: str | None = None
