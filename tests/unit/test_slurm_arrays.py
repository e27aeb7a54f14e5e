"""Slurm job arrays without Slurm: a group of alike jobs goes in with one ``sbatch --array``,
each task runs the script jobmill wrote for its job, and a restart finds a task by its array's
table (a recording runner stands in for the Slurm commands)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from jobmill.domain.jobtypes import Resources
from jobmill.domain.lifecycle import Phase
from jobmill.executors.base import ExecutorUnavailable, LaunchSpec
from jobmill.executors.slurm import (
    ARRAY_DIR,
    ARRAY_NAME_PREFIX,
    SlurmExecutor,
    parse_arrays,
    read_task_table,
)


def spec(root: Path, n: int, **changes: Any) -> LaunchSpec:
    workdir = root / "jobs" / f"job-{n}"
    values: dict[str, Any] = {
        "job_id": f"00000000-0000-4000-8000-{n:012d}",
        "argv": ["/bin/true", f"job {n}"],
        "env": {"PATH": "/usr/bin:/bin", "JOBMILL_TOKEN": f"secret-{n}"},
        "workdir": workdir,
        "stdout": workdir / "stdout.log",
        "stderr": workdir / "stderr.log",
        "resources": Resources(cpus=2, extra=["--hold"]),
    }
    values.update(changes)
    return LaunchSpec(**values)


class Runner:
    """Answers sbatch with an id (or an error), squeue/sacct from a table; records calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.scripts: list[str] = []
        self.answers: dict[str, Any] = {"sbatch": "5000;cluster\n"}

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> str:
        self.calls.append(list(argv))
        if argv[0] == "sbatch":
            self.scripts.append(kwargs["stdin"])
        answer = self.answers.get(argv[0], "")
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    def count(self, command: str) -> int:
        return sum(1 for argv in self.calls if argv[0] == command)


def array_directory(root: Path) -> Path:
    (directory,) = (root / "jobs" / ARRAY_DIR).iterdir()
    return directory


def test_alike_jobs_go_in_as_one_array(tmp_path: Path) -> None:
    runner = Runner()
    specs = [spec(tmp_path, n) for n in range(3)]
    ids = SlurmExecutor(runner=runner, array_min=3).submit_many(specs)
    assert ids == ["5000_0", "5000_1", "5000_2"]
    assert runner.calls == [["sbatch", "--parsable"]]
    directory = array_directory(tmp_path)
    script = runner.scripts[0]
    assert f"#SBATCH --job-name={ARRAY_NAME_PREFIX}{directory.name}\n" in script
    assert "#SBATCH --array=0-2\n" in script
    assert f"#SBATCH --output={directory}/%a.out\n" in script
    assert f"#SBATCH --chdir={directory}\n" in script
    assert "#SBATCH --cpus-per-task=2\n#SBATCH --export=NONE\n#SBATCH --hold\n" in script
    assert script.endswith('exec /bin/sh "./$SLURM_ARRAY_TASK_ID.sh"\n')
    for n, one in enumerate(specs):
        task = directory / f"{n}.sh"
        assert stat.S_IMODE(task.stat().st_mode) == 0o600  # it holds the job's token
        assert f"export JOBMILL_TOKEN=secret-{n}" in task.read_text()
        assert (directory / f"{n}.out").readlink() == one.stdout
        assert (directory / f"{n}.err").readlink() == one.stderr
        assert one.workdir.is_dir()
    assert read_task_table(directory) == {one.job_id: n for n, one in enumerate(specs)}


def test_small_groups_and_arrays_switched_off_go_one_by_one(tmp_path: Path) -> None:
    runner = Runner()
    specs = [spec(tmp_path, n) for n in range(3)]
    assert SlurmExecutor(runner=runner, array_min=4).submit_many(specs) == ["5000"] * 3
    assert SlurmExecutor(runner=runner, array_min=0).submit_many(specs) == ["5000"] * 3
    assert runner.count("sbatch") == 6
    assert all("--array" not in script for script in runner.scripts)
    assert not (tmp_path / "jobs" / ARRAY_DIR).exists()


def test_batch_key_is_what_tasks_of_one_array_must_share(tmp_path: Path) -> None:
    executor = SlurmExecutor()
    first, second = spec(tmp_path, 1), spec(tmp_path, 2, argv=["/bin/echo"], env={})
    assert executor.batch_key(first) == executor.batch_key(second)
    assert executor.batch_key(first) != executor.batch_key(spec(tmp_path, 3, execution_duration=60))
    assert executor.batch_key(first) != executor.batch_key(
        spec(tmp_path, 4, resources=Resources(cpus=3))
    )
    bad = Resources(extra=["--comment=a\nb"])
    assert executor.batch_key(spec(tmp_path, 5, resources=bad)) != executor.batch_key(
        spec(tmp_path, 6, resources=bad)
    )
    with pytest.raises(ValueError, match="batch_key"):
        executor.render_array([first, spec(tmp_path, 3, execution_duration=60)], tmp_path)


def test_a_task_runs_its_own_job_verbatim(tmp_path: Path) -> None:
    """Run the array's script as a task would (``SLURM_ARRAY_TASK_ID`` set, in its directory)."""
    show = (
        "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['NOTE'], os.getcwd()]))"
    )
    nasty = ["$(touch pwned)", "`id`", "a'b\"c", "\\", "x\ny", "*", "", "-n"]
    specs = [
        spec(tmp_path, n, argv=[sys.executable, "-c", show, str(n), *nasty],
             env={"NOTE": f"$HOME `id` '{n}'\n"})
        for n in range(3)
    ]  # fmt: skip
    runner = Runner()
    SlurmExecutor(runner=runner, array_min=2).submit_many(specs)
    directory = array_directory(tmp_path)
    (directory / "array.sh").write_text(runner.scripts[0])
    out = subprocess.run(
        ["/bin/sh", "array.sh"],
        env={"SLURM_ARRAY_TASK_ID": "1"},
        cwd=directory,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == [["1", *nasty], "$HOME `id` '1'\n", str(specs[1].workdir)]
    assert not any(path.name == "pwned" for path in tmp_path.rglob("*"))


def test_a_job_that_cannot_be_written_makes_the_group_go_one_by_one(tmp_path: Path) -> None:
    runner = Runner()
    specs = [spec(tmp_path, n) for n in range(3)]
    specs[1] = spec(tmp_path, 1, env={"BAD NAME": "x"})
    with pytest.raises(Exception) as failure:
        SlurmExecutor(runner=runner, array_min=2).submit_many(specs)
    # the first went in on its own, the second is the one at fault
    assert getattr(failure.value, "native_ids", None) == ["5000"]
    assert "not a valid environment variable name" in str(failure.value)
    assert runner.count("sbatch") == 1 and "--array" not in runner.scripts[0]


def test_an_array_sbatch_that_timed_out_is_found_before_anything_is_sent_again(
    tmp_path: Path,
) -> None:
    runner = Runner()
    runner.answers["sbatch"] = ExecutorUnavailable("sbatch did not answer within 30 s")
    executor = SlurmExecutor(runner=runner, array_min=2)
    specs = [spec(tmp_path, n) for n in range(3)]
    with pytest.raises(ExecutorUnavailable):
        executor.submit_many(specs)
    directory = array_directory(tmp_path)  # kept: the array may have gone in
    runner.answers["squeue"] = f"5001|{ARRAY_NAME_PREFIX}{directory.name}|{directory}|\n"
    runner.calls.clear()
    assert executor.submit_many(specs) == ["5001_0", "5001_1", "5001_2"]
    assert runner.count("sbatch") == 0


def test_polling_reads_array_tasks_and_clears_the_directory_once_all_ended(
    tmp_path: Path,
) -> None:
    runner = Runner()
    executor = SlurmExecutor(runner=runner, array_min=2)
    ids = executor.submit_many([spec(tmp_path, n) for n in range(2)])
    directory = array_directory(tmp_path)
    runner.answers["squeue"] = "5000_0|COMPLETED|0|None|\n5000_1|RUNNING|0|None|\n"
    statuses = executor.poll(ids)
    assert [statuses[i].phase for i in ids] == [Phase.COMPLETED, Phase.EXECUTING]
    assert "-r" in runner.calls[-1]  # one line per task
    assert directory.exists()
    runner.answers["squeue"] = "5000_1|FAILED|256|NonZeroExitCode|\n"
    assert executor.poll(ids[1:])[ids[1]].exit_code == 1
    assert not directory.exists()


def test_a_pending_task_cancelled_here_is_aborted_not_lost(tmp_path: Path) -> None:
    runner = Runner()
    executor = SlurmExecutor(runner=runner, array_min=2, lost_after=0)
    ids = executor.submit_many([spec(tmp_path, n) for n in range(2)])
    executor.cancel(ids[0])
    assert runner.calls[-1] == ["scancel", "5000_0"]
    runner.answers["squeue"] = "5000_1|PENDING|0|JobHeldUser|\n"  # Slurm forgot task 0
    statuses = executor.poll(ids)
    assert statuses[ids[0]].phase is Phase.ABORTED
    assert statuses[ids[1]].phase is Phase.HELD


def test_parse_arrays_keeps_jobmill_arrays_only(tmp_path: Path) -> None:
    hexname = "0" * 31 + "a"
    out = (
        f"71_[3-5]|{ARRAY_NAME_PREFIX}{hexname}|{tmp_path / hexname}\n"
        f"71_2|{ARRAY_NAME_PREFIX}{hexname}|{tmp_path / hexname}\n"
        f"72|{ARRAY_NAME_PREFIX}{hexname}|/elsewhere\n"
        f"73|someone-else|{tmp_path}\n"
        "garbage\n"
    )
    assert parse_arrays(out) == {"71": tmp_path / hexname}
