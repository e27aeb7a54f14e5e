"""The job type fields of workflows: ``epilog`` (an argv template like ``command``) and
``on_parent_failure``, with the loader's file:line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from jobmill.domain.jobtype_files import JobTypeFileError, load_jobtypes
from jobmill.domain.jobtypes import JobType, build_argv

BASE = {"name": "t", "command": ["run", "{n}"], "parameters": {"n": {"type": "integer"}}}


def test_the_epilog_is_built_like_the_command() -> None:
    jobtype = JobType.model_validate(BASE | {"epilog": ["finish", "{n}", "{job_dir}"]})
    builtins = {"job_dir": "/j", "jobtype_dir": ".", "job_id": "x"}
    assert build_argv(jobtype, {"n": 3}, builtins) == ["run", "3"]
    assert build_argv(jobtype, {"n": 3}, builtins, epilog=True) == ["finish", "3", "/j"]
    plain = JobType.model_validate(BASE)
    assert plain.epilog is None and plain.on_parent_failure == "fail"
    assert build_argv(plain, {"n": 3}, builtins, epilog=True) == ["run", "3"]


def test_a_parameter_only_the_epilog_mentions_is_delivered() -> None:
    jobtype = JobType.model_validate(
        {"name": "t", "command": ["run"], "epilog": ["end", "{n}"], "parameters": {"n": {}}}
    )
    assert jobtype.epilog == ["end", "{n}"]


def test_bad_epilogs_and_policies_are_refused() -> None:
    with pytest.raises(ValidationError, match="epilog: refers to unknown parameter"):
        JobType.model_validate(BASE | {"epilog": ["end", "{nope}"]})
    with pytest.raises(ValidationError):
        JobType.model_validate(BASE | {"epilog": []})
    with pytest.raises(ValidationError):
        JobType.model_validate(BASE | {"on_parent_failure": "retry"})


def test_the_loader_points_at_the_epilog(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("name: t\ncommand: [run]\nepilog: [end, '{nope}']\n")
    with pytest.raises(JobTypeFileError) as caught:
        load_jobtypes([str(tmp_path)])
    assert "t.yaml:3" in str(caught.value) and "epilog" in str(caught.value)


def test_the_environment_of_a_workflow_job() -> None:
    from jobmill.domain.jobs import Job, utcnow
    from jobmill.domain.lifecycle import Phase
    from jobmill.service.dispatcher import MAX_IDS_IN_ENV, workflow_environment

    job = Job(id="j", type="t", owner="u", phase=Phase.QUEUED, parameters={}, created_at=utcnow())
    assert workflow_environment(job) == {}
    job.after, job.parent_id = ("a", "b"), "super"
    assert workflow_environment(job) == {
        "JOBMILL_SUPER_JOB_ID": "super",
        "JOBMILL_PARENT_IDS": "a,b",
        "JOBMILL_PARENTS_FILE": "jobmill-parents.json",
    }
    # Thousands of ids would not fit one environment string (128 KiB): the file lists them.
    job.after = tuple(f"{i:036d}" for i in range(MAX_IDS_IN_ENV + 1))
    assert "JOBMILL_PARENT_IDS" not in workflow_environment(job)
    job.after, job.stage, job.children = (), "epilog", ("c1", "c2")
    assert workflow_environment(job) == {
        "JOBMILL_SUPER_JOB_ID": "super",
        "JOBMILL_STEP": "epilog",
        "JOBMILL_CHILD_IDS": "c1,c2",
        "JOBMILL_CHILDREN_FILE": "jobmill-children.json",
    }
