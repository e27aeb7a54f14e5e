"""What the workflow examples share: talking to jobmill with the job's own token (standard
library only, so it runs wherever a job runs)."""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any


def call(method: str, path: str, body: Any = None) -> Any:
    """A request to jobmill's native API, authorised by this job's own token."""
    request = urllib.request.Request(
        os.environ["JOBMILL_URL"] + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Authorization": "Bearer " + os.environ["JOBMILL_TOKEN"],
            "Content-Type": "application/json",
        },
        method=method,
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def report(values: dict[str, Any]) -> None:
    """Merge ``values`` into this job's report."""
    call("POST", f"/api/v1/jobs/{os.environ['JOBMILL_JOB_ID']}/report", values)


def sub_job(jobtype: str, parameters: dict[str, Any], after: list[str] | None = None) -> str:
    """Create a sub-job of this job; its id."""
    body = {"type": jobtype, "parameters": parameters, "after": after or []}
    return str(call("POST", "/api/v1/jobs", body)["id"])


def listed(variable: str) -> list[dict[str, Any]]:
    """The jobs a ``JOBMILL_*_FILE`` lists (the jobs this one ran after, or its sub-jobs)."""
    path = os.environ.get(variable)
    if not path:
        return []
    with open(path, encoding="utf-8") as handle:
        return list(json.load(handle))
