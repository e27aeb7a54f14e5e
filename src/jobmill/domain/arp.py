"""SLAC's Automatic Run Processor (ARP) in jobmill's words: experiments, runs, definitions.

A *definition* (ARP's "batch def", named by its "hash") says which executable to run on a run
of an experiment, with which space-separated parameters, and whether to run it automatically
when a run ends (*autorun*). Applying a definition to a run makes an *application*: one job,
``<executable> <experiment> <run> <parameters...>``, whose ``run_id`` is ``<experiment>/<run>``.

A definition is an implicit job type named ``arp:<experiment>:<name>`` (a colon can never
appear in a YAML job type's name, so the names cannot clash). ``status_names`` renders a job's
phase in ARP's status words, the LSF-era ones and the newer eLog "Workflow" ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jobmill.domain.errors import ValidationError
from jobmill.domain.jobs import Job
from jobmill.domain.jobtypes import JobType, Parameter, ParamType
from jobmill.domain.lifecycle import Phase, Reason

PREFIX = "arp:"
MAX_EXPERIMENT = 32
MAX_NAME = 27  # "arp:" + experiment + ":" + name fits the 64 characters of a job type name
MAX_EXECUTABLE = 4096
MAX_PARAMETERS = 4096
MAX_RUN = 2**31 - 1
EXPERIMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
NAME_RE = EXPERIMENT_RE

# Sets what the newer ARP clients read (ARP_JOB_ID, ARP_UPDATE_COUNTERS, JID_UPDATE_COUNTERS)
# from what every jobmill job gets, then runs the definition's executable. A constant script:
# user values only ever reach it as positional arguments ("$@"), never as shell text.
LAUNCH = (
    'export ARP_JOB_ID="$JOBMILL_JOB_ID" ARP_UPDATE_COUNTERS="$BATCH_UPDATE_URL" '
    'JID_UPDATE_COUNTERS="$BATCH_UPDATE_URL"; exec "$@"'
)


@dataclass
class Definition:
    """One ARP batch definition of an experiment."""

    id: int
    experiment: str
    name: str
    executable: str
    parameters: str
    executor: str
    created_by: str
    created_at: datetime
    autorun: bool = False
    autorun_by: str | None = None
    autorun_at: datetime | None = None

    @property
    def jobtype_name(self) -> str:
        return jobtype_name(self.experiment, self.name)

    @property
    def arguments(self) -> list[str]:
        """The parameters as ARP splits them: on whitespace, no quoting."""
        return self.parameters.split()


@dataclass
class Run:
    """A run of an experiment, as its start and end were posted."""

    experiment: str
    run: int
    parameters: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass
class Application:
    """A definition applied to a run: the entry of the run view, and its job."""

    id: int
    experiment: str
    run: int
    definition: str
    job_id: str | None
    trigger: str  # "manual", "autorun" or "backfill"
    created_by: str
    created_at: datetime
    removed_at: datetime | None = None
    removed_by: str | None = None
    attempt: int = 1  # re-applying the definition to the run makes the next one


TRIGGERS = ("manual", "autorun", "backfill")


# -- names and values ----------------------------------------------------------------------------


def jobtype_name(experiment: str, name: str) -> str:
    return f"{PREFIX}{experiment}:{name}"


def split_jobtype_name(value: str) -> tuple[str, str] | None:
    """``(experiment, name)`` of an ``arp:<experiment>:<name>`` job type name, else None."""
    if not value.startswith(PREFIX):
        return None
    experiment, sep, name = value[len(PREFIX) :].partition(":")
    return (experiment, name) if sep and experiment and name else None


def run_id(experiment: str, run: int) -> str:
    return f"{experiment}/{run}"


def check_experiment(value: str) -> str:
    if len(value) > MAX_EXPERIMENT or not EXPERIMENT_RE.match(value):
        raise ValidationError(
            f"'{value[:80]}' is not an experiment name (letters, digits, _.+-, at most "
            f"{MAX_EXPERIMENT})",
            field="experiment",
        )
    return value


def check_name(value: str, field_name: str = "name") -> str:
    if len(value) > MAX_NAME or not NAME_RE.match(value):
        raise ValidationError(
            f"'{value[:80]}' is not a definition name (letters, digits, _.+-, at most {MAX_NAME})",
            field=field_name,
        )
    return value


def check_executable(value: str) -> str:
    if not value or "\x00" in value or len(value) > MAX_EXECUTABLE:
        raise ValidationError("must be an absolute path to an executable", field="executable")
    if not value.startswith("/"):
        raise ValidationError(
            f"'{value[:200]}' is not an absolute path (ARP runs absolute paths only)",
            field="executable",
        )
    return value


def check_parameters(value: str) -> str:
    if "\x00" in value or len(value) > MAX_PARAMETERS:
        raise ValidationError(
            f"must be a space-separated string of at most {MAX_PARAMETERS} characters",
            field="parameters",
        )
    return value


def check_run(value: int, field_name: str = "run") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RUN:
        raise ValidationError(f"a run number is an integer from 0 to {MAX_RUN}", field=field_name)
    return value


def _literal(text: str) -> str:
    """An argv template element that is taken as it is (``{`` and ``}`` are not placeholders)."""
    return text.replace("{", "{{").replace("}", "}}")


def definition_jobtype(definition: Definition) -> JobType:
    """The implicit job type of a definition: ``<executable> {experiment} {run} <params...>``,
    with ``EXPERIMENT`` and ``RUN_NUM`` also in the environment."""
    jobtype = JobType(
        name="arp",  # validated under a plain name; the real one has the reserved colon
        description=f"ARP definition '{definition.name}' of experiment {definition.experiment}",
        command=[
            "/bin/sh",
            "-c",
            LAUNCH,
            "arp",
            _literal(definition.executable),
            "{experiment}",
            "{run}",
            *(_literal(p) for p in definition.arguments),
        ],
        parameters={
            "experiment": Parameter(
                type=ParamType.STRING,
                required=True,
                deliver="both",
                env="EXPERIMENT",
                description="the experiment",
            ),
            "run": Parameter(
                type=ParamType.INTEGER,
                required=True,
                min=0,
                max=MAX_RUN,
                deliver="both",
                env="RUN_NUM",
                description="the run number",
            ),
        },
        executor=definition.executor,
        reject_unknown_parameters=True,
    )
    return jobtype.model_copy(update={"name": definition.jobtype_name})


# -- status names --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusNames:
    """A job's status in ARP's words: ``status`` (LSF era) and ``workflow`` (eLog Workflow)."""

    status: str
    workflow: str


def status_names(job: Job, *, slow: bool = False) -> StatusNames:
    """The one place ARP status names come from.

    ``slow`` says the backend took longer than ``JOBMILL_SLOW_SUBMIT`` to accept the job (its
    ``submitted`` event carries ``slow``): ARP's ``LSF_Slow``, shown until the job leaves the
    queue, when the backend's real state takes over.
    """
    phase = job.phase
    if phase is Phase.ARCHIVED:  # ended earlier: the exit status tells how
        phase = Phase.COMPLETED if job.exit_code == 0 and not job.error else Phase.ERROR
    if phase is Phase.QUEUED:
        if job.reason == Reason.BACKEND_UNAVAILABLE.value:
            return StatusNames("Persisted", "START")
        if job.reason == Reason.BACKEND.value:
            return StatusNames("LSF_Slow" if slow else "PEND", "SUBMITTED")
        return StatusNames("Request Sent", "START")  # not handed to a backend yet
    return _BY_PHASE[phase]


_BY_PHASE: dict[Phase, StatusNames] = {
    Phase.PENDING: StatusNames("Request Sent", "START"),
    Phase.EXECUTING: StatusNames("RUN", "RUNNING"),
    Phase.HELD: StatusNames("PSUSP", "SUBMITTED"),
    Phase.SUSPENDED: StatusNames("USUSP", "RUNNING"),
    Phase.UNKNOWN: StatusNames("UNKWN", "RUNNING"),
    Phase.COMPLETED: StatusNames("DONE", "DONE"),
    Phase.ERROR: StatusNames("EXIT", "FAILED"),
    Phase.ABORTED: StatusNames("EXIT", "EXITED"),
}
