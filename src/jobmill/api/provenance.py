"""Provenance and job descriptions under ``/api/v1``: a thin face over ``ProvenanceService``.

* ``GET /api/v1/jobs/{id}/provenance?format=json|xml|provn|svg&depth=N``: the W3C PROV
  provenance of a finished job (409 before it has finished).
* ``GET /api/v1/jobtypes/{name}/description``: the job type as an IVOA Provenance
  ActivityDescription in a VOTable, as OPUS serves its job definitions.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from jobmill.api.auth import current_user
from jobmill.api.responses import COMMON, errors
from jobmill.service.descriptions import MEDIA_TYPE as VOTABLE_MEDIA_TYPE
from jobmill.service.descriptions import activity_description
from jobmill.service.jobs import JobService, User
from jobmill.service.provenance import MAX_DEPTH, ProvenanceService

router = APIRouter(prefix="/api/v1", tags=["provenance"], responses=errors(*COMMON, 404))
UserDep = Annotated[User, Depends(current_user)]


def base_url(request: Request) -> str:
    """The server URL the documents' ``jobmill:`` namespace is built on."""
    public: str | None = request.app.state.jobmill.settings.public_url
    return (public or str(request.base_url)).rstrip("/")


def provenance_service(request: Request) -> ProvenanceService:
    jobs: JobService = request.app.state.jobmill.jobs
    return ProvenanceService(jobs, base_url(request))


ProvenanceDep = Annotated[ProvenanceService, Depends(provenance_service)]


@router.get(
    "/jobs/{job_id}/provenance",
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/json": {},
                "application/xml": {},
                "text/provenance-notation": {},
                "image/svg+xml": {},
            },
            "description": "The provenance document",
        },
        409: {"description": "the job has not finished yet"},
        422: {"description": "unknown format or depth out of range"},
    },
)
def job_provenance(
    job_id: str,
    provenance: ProvenanceDep,
    user: UserDep,
    format: Annotated[str, Query(description="json, xml, provn or svg")] = "json",
    depth: Annotated[int, Query(description=f"job levels, 1 (this job) to {MAX_DEPTH}")] = 1,
) -> Response:
    """The provenance of a finished job: activity, owner, parameters, used data, results.

    ``depth`` > 1 follows the results the job used to the jobs that generated them.
    """
    rendered = provenance.render(user, job_id, format, depth)
    return Response(rendered.body, media_type=rendered.media_type)


@router.get(
    "/jobtypes/{name}/description",
    response_class=Response,
    tags=["job types"],
    responses={200: {"content": {VOTABLE_MEDIA_TYPE: {}}, "description": "VOTable"}},
)
def jobtype_description(name: str, request: Request, _user: UserDep) -> Response:
    """The job type as an IVOA Provenance ActivityDescription serialised as VOTable."""
    jobs: JobService = request.app.state.jobmill.jobs
    return Response(activity_description(jobs.jobtype(name)), media_type=VOTABLE_MEDIA_TYPE)
