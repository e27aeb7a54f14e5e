"""Results: the files a job type declares (patterns in the job's working directory).

A result must be a regular file inside the working directory, reached without a symbolic link:
a job that makes ``result.txt -> /etc/shadow`` gets no result (docs/security.md).
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from jobmill.domain.confine import has_symlink
from jobmill.domain.errors import NotFound
from jobmill.domain.jobs import Job
from jobmill.domain.jobtypes import JobType
from jobmill.service.files import JobFiles

MAX_RESULTS = 1000


@dataclass(frozen=True)
class ResultFile:
    """One result of a job."""

    id: str
    path: Path
    size: int
    content_type: str


def list_results(files: JobFiles, jobtype: JobType | None, job: Job) -> list[ResultFile]:
    """The job's result files, in declaration order; ids are unique within the job.

    A declared result matching one file gets the declared name as its id; one matching several
    gets ``name/<relative path>`` for each.
    """
    if jobtype is None:
        return []
    workdir = files.workdir(job.id)
    if not workdir.is_dir():
        return []
    found: list[ResultFile] = []
    seen: set[Path] = set()
    for declared in jobtype.results:
        matches = sorted(p for p in workdir.glob(declared.pattern) if p.is_file())
        matches = [p for p in matches if _safe(workdir, p) and p not in seen]
        for path in matches:
            seen.add(path)
            rel = path.relative_to(workdir).as_posix()
            result_id = declared.name if len(matches) == 1 else f"{declared.name}/{rel}"
            content_type = declared.content_type
            if content_type == "application/octet-stream":
                content_type = mimetypes.guess_type(path.name)[0] or content_type
            found.append(ResultFile(result_id, path, path.stat().st_size, content_type))
            if len(found) >= MAX_RESULTS:
                return found
    return found


def find_result(files: JobFiles, jobtype: JobType | None, job: Job, result_id: str) -> ResultFile:
    for result in list_results(files, jobtype, job):
        if result.id == result_id:
            return result
    raise NotFound(f"job {job.id} has no result '{result_id}'", field="result")


def open_result(
    files: JobFiles, jobtype: JobType | None, job: Job, result_id: str
) -> tuple[ResultFile, BinaryIO]:
    """The result and its file opened for reading (no symbolic link followed): 404 when it is
    gone, 403 when a link was swapped in since it was listed."""
    result = find_result(files, jobtype, job, result_id)
    handle = files.open_file(job, result.path, f"result '{result_id}'")
    if handle is None:
        raise NotFound(f"job {job.id} has no result '{result_id}'", field="result")
    return result, handle


def _safe(root: Path, path: Path) -> bool:
    """Inside ``root`` and reached without a symbolic link."""
    return _inside(root, path) and not has_symlink(path)


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
