"""Where a job's files live: its working directory and its stdout/stderr logs."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from jobmill.domain.errors import ValidationError
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
        path = self.log_path(job, stream)
        try:
            with open(path, "rb") as handle:
                size = handle.seek(0, 2)
                start = max(0, size - min(tail, limit)) if tail is not None else min(offset, size)
                handle.seek(start)
                return LogChunk(handle.read(limit), start, size, True)
        except FileNotFoundError:
            return LogChunk(b"", 0, 0, False)

    def remove(self, job: Job) -> None:
        shutil.rmtree(self.workdir(job.id), ignore_errors=True)
        if job.log_dir:
            for stream in STREAMS:
                self.log_path(job, stream).unlink(missing_ok=True)
