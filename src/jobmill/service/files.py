"""Where a job's files live: its working directory and its stdout/stderr logs.

Files are read on a user's behalf without following symbolic links (``open_inside``): a job,
or a user who can write to a ``log_dir``, could otherwise swap in a link to any file the server
can read (docs/security.md).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from jobmill.domain.confine import has_symlink, open_nofollow
from jobmill.domain.errors import Forbidden, ValidationError
from jobmill.domain.jobs import Job

MAX_LOG_READ = 8 << 20
STREAMS = ("stdout", "stderr")


@dataclass(frozen=True)
class LogChunk:
    """A slice of a log file."""

    text: bytes
    offset: int
    size: int
    exists: bool


class JobFiles:
    """The file layout of jobs under ``home/jobs``."""

    def __init__(self, home: Path) -> None:
        self.root = home.resolve() / "jobs"

    def workdir(self, job_id: str) -> Path:
        return self.root / job_id

    def log_path(self, job: Job, stream: str) -> Path:
        if stream not in STREAMS:
            raise ValidationError(f"unknown log '{stream}' (stdout or stderr)", field="stream")
        if job.log_dir:
            suffix = ".out" if stream == "stdout" else ".err"
            return Path(job.log_dir) / f"{uuid.UUID(job.id).hex}{suffix}"
        return self.workdir(job.id) / f"{stream}.log"

    def read_log(
        self,
        job: Job,
        stream: str,
        *,
        offset: int = 0,
        tail: int | None = None,
        limit: int = 1 << 20,
    ) -> LogChunk:
        """Up to ``limit`` bytes from ``offset``, or the last ``tail`` bytes."""
        if offset < 0:
            raise ValidationError("offset must not be negative", field="offset")
        if tail is not None and tail < 0:
            raise ValidationError("tail must not be negative", field="tail")
        limit = max(0, min(limit, MAX_LOG_READ))
        handle = open_inside(self.log_path(job, stream), f"the {stream} of job {job.id}")
        if handle is None:
            return LogChunk(b"", 0, 0, False)
        with handle:
            size = handle.seek(0, 2)
            start = max(0, size - min(tail, limit)) if tail is not None else min(offset, size)
            handle.seek(start)
            return LogChunk(handle.read(limit), start, size, True)

    def open_log(self, job: Job, stream: str) -> tuple[BinaryIO, int] | None:
        """The whole log, opened, with its size now (None while it does not exist)."""
        handle = open_inside(self.log_path(job, stream), f"the {stream} of job {job.id}")
        if handle is None:
            return None
        return handle, os.fstat(handle.fileno()).st_size

    def open_file(self, job: Job, path: Path, what: str) -> BinaryIO | None:
        """A file of the job's working directory (a result, an upload), opened for reading;
        None when it is not there; ``Forbidden`` when it is outside the working directory or
        a symbolic link leads to it."""
        workdir = self.workdir(job.id)
        try:
            path.absolute().relative_to(workdir)
        except ValueError:
            raise Forbidden(f"{what} is outside the job's working directory") from None
        return open_inside(path.absolute(), what)

    def remove(self, job: Job) -> None:
        shutil.rmtree(self.workdir(job.id), ignore_errors=True)
        if job.log_dir:
            for stream in STREAMS:
                self.log_path(job, stream).unlink(missing_ok=True)


def open_inside(path: Path, what: str) -> BinaryIO | None:
    """Open ``path`` for reading, refusing (``Forbidden``) a symbolic link anywhere in it;
    None when it does not exist."""
    try:
        fd = open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block us
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and has_symlink(path):
            raise Forbidden(f"{what} is a symbolic link: refused") from None
        if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.ELOOP):
            return None
        raise
    handle = os.fdopen(fd, "rb")
    if not _regular(handle):
        handle.close()
        return None
    return handle


def _regular(handle: BinaryIO) -> bool:
    return stat.S_ISREG(os.fstat(handle.fileno()).st_mode)
