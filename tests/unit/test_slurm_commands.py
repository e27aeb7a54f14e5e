"""``executors._commands.run``: argv only, a timeout, bounded output, and errors sorted into
"the backend is unreachable" (retry later) and "the command refused" (fail the job)."""

from __future__ import annotations

import re
import time

import pytest

from jobmill.executors._commands import CommandFailed, run
from jobmill.executors.base import ExecutorUnavailable
from jobmill.executors.slurm import SLURM_TRANSIENT


def test_returns_stdout_and_feeds_stdin() -> None:
    assert run(["/bin/echo", "a b", "$HOME"], timeout=5) == "a b $HOME\n"
    big = "x" * (1 << 20) + "\n"  # more than a pipe buffer each way
    assert run(["/bin/cat"], timeout=10, stdin=big) == big


def test_no_shell_is_involved() -> None:
    assert run(["/bin/echo", "$(id)", ";", "|"], timeout=5) == "$(id) ; |\n"


def test_a_missing_command_means_the_backend_is_unavailable() -> None:
    with pytest.raises(ExecutorUnavailable, match="/nowhere/sbatch"):
        run(["/nowhere/sbatch", "--parsable"], timeout=5)


def test_timeout_kills_the_command() -> None:
    started = time.monotonic()
    with pytest.raises(ExecutorUnavailable, match=r"did not answer within 0\.3 s"):
        run(["/bin/sleep", "10"], timeout=0.3)
    assert time.monotonic() - started < 3


def test_a_refusal_carries_stderr() -> None:
    with pytest.raises(CommandFailed) as info:
        run(
            ["/bin/sh", "-c", "echo 'sbatch: error: Invalid partition name specified' >&2; exit 1"],
            timeout=5,
        )
    assert info.value.returncode == 1
    assert "Invalid partition name specified" in str(info.value)
    assert isinstance(info.value, OSError)  # the engine fails the job with this message


def test_unreachable_controller_messages_are_transient() -> None:
    message = "sbatch: error: Batch job submission failed: Unable to contact slurm controller"
    with pytest.raises(ExecutorUnavailable, match="Unable to contact slurm controller"):
        run(
            ["/bin/sh", "-c", f"echo '{message}' >&2; exit 1"], timeout=5, transient=SLURM_TRANSIENT
        )


def test_accepted_exit_codes() -> None:
    out = run(
        ["/bin/sh", "-c", "echo '1|RUN'; echo 'Job <2> is not found' >&2; exit 255"],
        timeout=5,
        accept=(0, 255),
        transient=re.compile("not responding"),
    )
    assert out == "1|RUN\n"


def test_output_is_bounded() -> None:
    with pytest.raises(CommandFailed, match="printed more than 1000 bytes"):
        run(["/bin/sh", "-c", "yes | head -c 100000"], timeout=5, max_output=1000)


def test_stderr_in_messages_is_bounded() -> None:
    with pytest.raises(CommandFailed) as info:
        run(["/bin/sh", "-c", "yes error | head -c 1000000 >&2; exit 2"], timeout=10)
    assert len(str(info.value)) < 2200
