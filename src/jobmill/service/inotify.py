"""A minimal Linux inotify binding (ctypes, no dependency) for the data watcher.

Why not ``watchfiles``: it drops inotify's ``IN_CLOSE_WRITE`` (reported by its ``notify``
backend as an access event and discarded), so it cannot tell a file still being written from a
finished one, and it cannot add or remove a directory without recreating the watcher, losing
the events in between. The data watcher needs exactly those two things; the kernel interface
for them is three system calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = 0o2000000

DIRECTORY_MASK = (
    IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)
_HEADER = struct.Struct("iIII")


@dataclass(frozen=True, slots=True)
class InotifyEvent:
    """One event: the watch it came from, what happened, and the entry name (may be empty)."""

    wd: int
    mask: int
    name: str


class Inotify:
    """One inotify instance: add and remove directory watches, read events without blocking."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(name, use_errno=True)
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd: int = fd

    def add(self, path: str, mask: int = DIRECTORY_MASK) -> int:
        """Watch a directory; returns the watch descriptor (the same one for the same inode)."""
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return int(wd)

    def remove(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)  # an already gone watch is not an error here

    def read(self) -> Iterator[InotifyEvent]:
        """Every event queued now (nothing when there is none)."""
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                return
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                raw = data[offset : offset + length].split(b"\0", 1)[0]
                offset += length
                yield InotifyEvent(wd, mask, os.fsdecode(raw))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def available() -> bool:
    """Whether this system has inotify (Linux)."""
    try:
        Inotify().close()
    except (OSError, AttributeError):
        return False
    return True
