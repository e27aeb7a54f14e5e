"""The one function that runs batch-system commands (``sbatch``, ``squeue``, ``bsub``...).

A command is an argv list, never a shell string. Every call has a timeout and a bound on the
output it keeps. A command that cannot run at all (not installed, timed out, or refused with a
message that says the scheduler is unreachable) raises ``ExecutorUnavailable``: the caller
keeps the job and tries again later. A command that ran and said no raises ``CommandFailed``.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence

from jobmill.executors.base import ExecutorUnavailable

MAX_OUTPUT = 32 << 20  # bytes of stdout kept; a longer answer is an error, not a truncation
MAX_STDERR = 64 << 10  # bytes of stderr kept (the end of it matters most)
MAX_MESSAGE = 2000  # characters of stderr quoted in an error message
_READ = 1 << 16


class CommandFailed(OSError):
    """A scheduler command ran and refused (non-zero exit). Retrying will not help.

    It is an ``OSError`` so that the engine fails the job with this message instead of
    keeping it queued.
    """

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        what = os.path.basename(argv[0]) if argv else "command"
        detail = _tail(stderr) or "no message"
        super().__init__(f"{what} failed (exit {returncode}): {detail}")


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    stdin: str | None = None,
    transient: re.Pattern[str] | None = None,
    accept: Collection[int] = (0,),
    env: Mapping[str, str] | None = None,
    max_output: int = MAX_OUTPUT,
) -> str:
    """Run ``argv`` and return its standard output.

    ``transient`` matches the messages (on stderr) that mean the scheduler is unreachable
    or busy rather than that it refused: those raise ``ExecutorUnavailable`` whatever the
    exit status. ``accept`` lists the exit statuses that are not failures (``bjobs`` exits 255
    when one of many ids is unknown, yet prints the others).
    """
    argv = [str(a) for a in argv]
    try:
        proc = subprocess.Popen(  # noqa: S603 - an argv list, never a shell
            argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            close_fds=True,
        )
    except OSError as exc:
        raise ExecutorUnavailable(f"{argv[0]}: {exc.strerror or exc}") from None
    try:
        out, err = _communicate(proc, stdin, timeout, max_output)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise ExecutorUnavailable(
            f"{os.path.basename(argv[0])} did not answer within {timeout:g} s"
        ) from None
    except _TooLong:
        _kill(proc)
        raise CommandFailed(argv, None, f"printed more than {max_output} bytes") from None
    stderr = err.decode(errors="replace")
    if transient is not None and transient.search(stderr):
        raise ExecutorUnavailable(f"{os.path.basename(argv[0])}: {_tail(stderr)}")
    if proc.returncode not in accept:
        raise CommandFailed(argv, proc.returncode, stderr)
    return out.decode(errors="replace")


class _TooLong(Exception):
    pass


def _communicate(
    proc: subprocess.Popen[bytes], stdin: str | None, timeout: float, max_output: int
) -> tuple[bytes, bytes]:
    """Feed ``stdin`` and collect stdout/stderr with one deadline and bounded buffers."""
    deadline = time.monotonic() + timeout
    out = bytearray()
    err = bytearray()
    pending = memoryview(stdin.encode()) if stdin is not None else memoryview(b"")
    assert proc.stdout is not None and proc.stderr is not None
    with selectors.DefaultSelector() as selector:
        if proc.stdin is not None:
            if pending:
                os.set_blocking(proc.stdin.fileno(), False)
                selector.register(proc.stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout)
            for key, _events in selector.select(remaining):
                if key.fileobj is proc.stdin:
                    try:
                        written = os.write(key.fd, pending[:_READ])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        written = len(pending)
                    pending = pending[written:]
                    if not pending:
                        selector.unregister(key.fileobj)
                        with contextlib.suppress(BrokenPipeError):
                            proc.stdin.close()
                    continue
                chunk = os.read(key.fd, _READ)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer: bytearray = key.data
                buffer += chunk
                if buffer is out and len(out) > max_output:
                    raise _TooLong
                if buffer is err and len(err) > MAX_STDERR:
                    del err[: len(err) - MAX_STDERR]
    proc.wait(max(0.0, deadline - time.monotonic()))
    for stream in (proc.stdout, proc.stderr):
        stream.close()
    return bytes(out), bytes(err)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _tail(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else "..." + text[-MAX_MESSAGE:]
