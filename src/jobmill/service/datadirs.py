"""Which directories the data watcher looks at, and how: watched (inotify) or scanned.

``DirectoryPlanner.expand`` turns the directory part of a pattern into the existing directories
it can match (every level, so new matching subdirectories are seen), or the nearest existing
ancestor when a literal directory does not exist yet; ``wanted`` does so for every waiting
pattern at once. ``scan_here`` says whether a directory must be scanned: under a configured
scan root, or on a network filesystem whose writes from other hosts inotify cannot see.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from jobmill.domain.conditions import has_magic, join, literal_prefix

log = logging.getLogger(__name__)
MAX_DIRS_PER_PATTERN = 10_000
MOUNTS_MAX_AGE = 60.0
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "fuse.ceph",
        "cephfs",
        "beegfs",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "afs",
        "9p",
        "panfs",
        "wekafs",
        "orangefs",
        "pvfs2",
        "fuse.s3fs",
        "fuse.gcsfuse",
    }
)


@dataclass
class _Mounts:
    table: list[tuple[str, str]] = field(default_factory=list)  # (mount point, fs type)
    read_at: float = -1e9


def _decode_mount(text: str) -> str:
    return text.encode().decode("unicode_escape") if "\\" in text else text


def _under(directory: str, root: str) -> bool:
    return directory == root or directory.startswith(root.rstrip("/") + "/")


def watch_spec(spec: tuple[str, ...]) -> tuple[str, ...]:
    """``spec`` cut after its first ``**``: every directory below the one that ``**`` starts
    from can lead to a match, whatever follows, so both lead to the same directories."""
    if "**" in spec:
        return spec[: spec.index("**") + 1]
    return spec


class DirectoryPlanner:
    """Expands pattern directories and chooses between watching and scanning."""

    def __init__(self, scan_roots: tuple[str, ...] = ()) -> None:
        self.scan_roots = tuple(os.path.normpath(r) for r in scan_roots)
        self._mounts = _Mounts()

    def expand(
        self, spec: tuple[str, ...], listing: dict[str, list[str]] | None = None
    ) -> set[str]:
        """The existing directories ``spec`` (components, wildcards allowed) can lead to.

        ``listing`` caches the subdirectories of each directory read: pass the same dict to
        the expansions of one planning pass, so a tree several patterns share is read once."""
        cache: dict[str, list[str]] = {} if listing is None else listing
        spec = watch_spec(spec)

        def subdirs(directory: str) -> list[str]:
            found = cache.get(directory)
            if found is None:
                found = cache[directory] = self.subdirs(directory)
            return found

        literal = literal_prefix(spec)
        base = literal
        while base and not os.path.isdir(join(base)):
            base = base[:-1]
        if len(base) < len(literal) or len(literal) == len(spec):
            return {join(base)}
        found: set[str] = set()
        seen: set[tuple[str, int]] = set()
        magic = [has_magic(component) for component in spec]
        stack = [(join(base), len(base))]  # (directory, index of the component it is at)
        while stack and len(found) < MAX_DIRS_PER_PATTERN:
            current, k = stack.pop()
            if (current, k) in seen:
                continue
            seen.add((current, k))
            found.add(current)
            if k == len(spec):
                continue
            component = spec[k]
            prefix = current if current.endswith("/") else current + "/"
            if component == "**":
                stack.append((current, k + 1))
                stack.extend((prefix + s, k) for s in subdirs(current))
            elif magic[k]:
                stack.extend(
                    (prefix + s, k + 1) for s in subdirs(current) if fnmatchcase(s, component)
                )
            elif os.path.isdir(prefix + component):
                stack.append((prefix + component, k + 1))
        if stack:
            log.warning("pattern directory %s matches over %d directories", join(spec), len(found))
        return found

    def wanted(self, specs: Iterable[tuple[str, ...]]) -> set[str]:
        """Every existing directory the pattern directories ``specs`` can lead to (or the
        nearest existing ancestor of a missing one): what the watcher watches or scans. Each
        directory is read once, however many patterns share it."""
        wanted: set[str] = set()
        listing: dict[str, list[str]] = {}
        for spec in {watch_spec(spec) for spec in specs}:
            wanted |= self.expand(spec, listing)
        return wanted

    @staticmethod
    def subdirs(directory: str) -> list[str]:
        try:
            with os.scandir(directory) as entries:
                return [e.name for e in entries if e.is_dir(follow_symlinks=True)]
        except OSError:
            return []

    def scan_here(self, directory: str) -> bool:
        """Whether ``directory`` must be scanned rather than watched."""
        if any(_under(directory, root) for root in self.scan_roots):
            return True
        return self.fstype(directory) in NETWORK_FILESYSTEMS

    def fstype(self, directory: str) -> str:
        """The filesystem type of ``directory`` from ``/proc/self/mountinfo`` ("" if unknown)."""
        if time.monotonic() - self._mounts.read_at > MOUNTS_MAX_AGE:
            table: list[tuple[str, str]] = []
            with contextlib.suppress(OSError):
                with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
                    for line in handle:
                        head, _, tail = line.partition(" - ")
                        fields = head.split()
                        if len(fields) >= 5 and tail:
                            table.append((_decode_mount(fields[4]), tail.split()[0]))
            table.sort(key=lambda entry: len(entry[0]), reverse=True)
            self._mounts = _Mounts(table, time.monotonic())
        for mount, fstype in self._mounts.table:
            if _under(directory, mount):
                return fstype
        return ""
