"""JobService: create, validate, look at, abort, hold, release and delete jobs; show what a
job's backend says about it and the exact script a job would be submitted with. Every face
calls this.

``JobService`` is one object made of parts, one module each: ``creation`` (validation,
creation, dry runs), ``reading`` (lists, events, logs, results, backend details), ``control``
(run, abort, hold, release, delete, parameter changes), ``reporting`` (progress reports
posted by jobs), ``manager`` (edit, reset, clone, tags) and ``links`` (dependencies, sub-jobs,
the graph), over the shared state of ``base``."""

from __future__ import annotations

from jobmill.domain.jobs import JobRequest
from jobmill.domain.users import User
from jobmill.service.jobs.base import BackendUnavailable, LaunchSpecFor
from jobmill.service.jobs.control import JobControl
from jobmill.service.jobs.creation import JobCreation, Rendered, check_request
from jobmill.service.jobs.links import Graph
from jobmill.service.jobs.manager import JobManagement
from jobmill.service.jobs.reading import JobReading, Page, parse_time
from jobmill.service.jobs.reporting import JobReporting

__all__ = [
    "BackendUnavailable",
    "Graph",
    "JobRequest",
    "JobService",
    "LaunchSpecFor",
    "Page",
    "Rendered",
    "User",
    "check_request",
    "parse_time",
]


class JobService(JobManagement, JobCreation, JobReading, JobControl, JobReporting):
    """The rules about jobs, in one place."""
