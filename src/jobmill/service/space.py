"""Free space: jobmill refuses new jobs (507) rather than fill its disk, and says so.

``DiskSpace`` watches the filesystem of jobmill's home (working directories, logs and, with
SQLite, the database): under ``JOBMILL_MIN_FREE`` free bytes, creating a job answers 507
Insufficient Storage, ``/healthz`` answers 503 "degraded", local jobs wait before they start,
and a local job that fails meanwhile has the full disk named in its error. ``disk_full`` tells
a full disk (``ENOSPC``, SQLite's "database or disk is full", PostgreSQL's ``disk_full``)
from other errors.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobmill.domain.errors import InsufficientStorage

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
SQLITE_FULL = 13
PG_DISK_FULL = "53100"
_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB")


def format_size(size: int) -> str:
    """``1073741824`` -> ``1 GiB``, ``65536`` -> ``64 KiB``, ``1536`` -> ``1.5 KiB``."""
    value = float(size)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"  # pragma: no cover


def free_bytes(path: str | Path) -> int | None:
    """Free bytes (for an unprivileged user) on the filesystem of ``path`` or its nearest
    existing ancestor; None when it cannot be asked."""
    current = Path(path).absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    try:
        return shutil.disk_usage(current).free
    except OSError:
        return None


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says the disk or the user's quota is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL_ERRNOS:
            return True
        if getattr(current, "sqlite_errorcode", None) == SQLITE_FULL:
            return True
        if PG_DISK_FULL in (getattr(current, "pgcode", None), getattr(current, "sqlstate", None)):
            return True
        text = str(current).lower()
        if "database or disk is full" in text or "no space left on device" in text:
            return True
        orig = getattr(current, "orig", None)  # SQLAlchemy wraps the driver's error
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


@dataclass(frozen=True)
class DiskSpace:
    """The free space of jobmill's home against the minimum it needs (``JOBMILL_MIN_FREE``)."""

    path: Path
    min_free: int  # 0: never refuse

    def free(self) -> int | None:
        return free_bytes(self.path)

    def low(self) -> bool:
        """Under the minimum (never when the minimum is 0 or the filesystem cannot be asked)."""
        if self.min_free <= 0:
            return False
        free = self.free()
        return free is not None and free < self.min_free

    def status(self) -> dict[str, Any]:
        """What ``/healthz`` shows: the path, free bytes, the minimum, and whether it is met."""
        free = self.free()
        ok = self.min_free <= 0 or free is None or free >= self.min_free
        return {"path": str(self.path), "free": free, "min_free": self.min_free, "ok": ok}

    def message(self, free: int | None = None) -> str:
        free = self.free() if free is None else free
        have = format_size(free) if free is not None else "too little"
        return (
            f"the server's disk is nearly full: {have} free under {self.path}, jobmill needs "
            f"{format_size(self.min_free)} (JOBMILL_MIN_FREE)"
        )

    def check(self) -> None:
        """Raise ``InsufficientStorage`` (507) when under the minimum."""
        if self.min_free <= 0:
            return
        free = self.free()
        if free is not None and free < self.min_free:
            raise InsufficientStorage(f"{self.message(free)}; nothing was created")

    def refused(self) -> InsufficientStorage:
        """The 507 for an operation that failed because the disk filled up meanwhile."""
        return InsufficientStorage(
            f"the server's disk is full ({os.strerror(errno.ENOSPC).lower()}, under "
            f"{self.path} or the database's disk); nothing was created"
        )
