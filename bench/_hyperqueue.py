"""HyperQueue as a same-run peer of the dispatch benchmark.

HyperQueue (a Rust HPC task scheduler) ships as the PyPI wheel ``hyperqueue``, which embeds its
server and worker. The wheel is installed once, pinned, into a separate venv cached in
``$JOBMILL_BENCH_CACHE/hyperqueue-<version>`` (default ``~/.cache/jobmill-bench``); jobmill's
own environment is never touched. Each measurement runs a small script in that venv as a
subprocess: a ``LocalCluster`` with one worker of ``slots`` cores, a warm-up job, then one job of
``n`` ``/bin/true`` tasks, each in its own working directory with its own ``stdout.log`` and
``stderr.log`` (the per-job directory and log files jobmill's local executor creates).

The embedded server cannot be bound to loopback: it listens on all interfaces, without a key.
The script therefore runs in private user, network and UTS namespaces (``unshare``), where
only its own loopback exists (brought up by the script, with the host name set to
``localhost`` so that the address the server advertises resolves to it). Without such
namespaces HyperQueue is not measured.

Timing: the clock starts just before ``client.submit`` and stops at the last time a task's log
file was created (its ``st_mtime``: HyperQueue creates them as it starts the task, which
``/bin/true`` then ends within about a millisecond). The client API exposes no task end times
and ``wait_for_jobs`` polls about once a second, so its return time (also reported, as
``seconds_wait``) overstates the run by up to a second; the file times favour HyperQueue
slightly (its last task's own run and the report of its end are left out), which is the
conservative side for a "jobmill >= k x HyperQueue" target.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

VERSION = "0.27.0"
WARMUP = 20
CACHE_ROOT = Path(os.environ.get("JOBMILL_BENCH_CACHE") or Path.home() / ".cache" / "jobmill-bench")
NAMESPACES = ["--user", "--map-root-user", "--net", "--uts"]

# Runs in the HyperQueue venv, inside the namespaces. argv[1]: JSON {n, slots, root, out}.
RUNNER = r"""
import fcntl, json, os, resource, socket, struct, sys, time
from pathlib import Path

args = json.loads(sys.argv[1])
root = Path(args["root"])

# A fresh network namespace has only a loopback interface, and it is down.
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    ifreq = struct.pack("16sH22x", b"lo", 0)
    flags = struct.unpack("16sH22x", fcntl.ioctl(sock, 0x8913, ifreq))[1]  # SIOCGIFFLAGS
    fcntl.ioctl(sock, 0x8914, struct.pack("16sH22x", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP
socket.sethostname("localhost")  # the server advertises the host name to its worker

from hyperqueue import Job
from hyperqueue.cluster import LocalCluster, WorkerConfig


def cpu(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def batch(client, name, n):
    job = Job()
    dirs = [root / name / f"job-{i}" for i in range(n)]
    for d in dirs:
        job.program(["/bin/true"], cwd=str(d), stdout=str(d / "stdout.log"),
                    stderr=str(d / "stderr.log"))
    cpu0, kids0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    start = time.time()
    submitted = client.submit(job)
    client.wait_for_jobs([submitted], raise_on_error=False)
    waited = time.time()
    cpu1, kids1 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    failed = len(client.get_failed_tasks(submitted))
    last = max(os.stat(d / log).st_mtime_ns for d in dirs for log in ("stdout.log", "stderr.log"))
    return {
        "tasks": n,
        "failed": failed,
        "seconds": last / 1e9 - start,
        "seconds_wait": waited - start,
        "cpu": cpu1 - cpu0,
        "tasks_cpu": kids1 - kids0,
    }


with LocalCluster(server_dir=str(root / "server")) as cluster:
    cluster.start_worker(WorkerConfig(cores=args["slots"]))
    client = cluster.client()
    batch(client, "warmup", args["warmup"])
    result = batch(client, "measured", args["n"])
Path(args["out"]).write_text(json.dumps(result))
"""


@dataclass
class HQRun:
    """One measured HyperQueue job."""

    tasks: int
    failed: int
    seconds: float  # submission to the creation of the last task's log files
    seconds_wait: float  # submission to the return of wait_for_jobs (polls once a second)
    cpu: float  # CPU seconds of the process holding server, worker and client (all threads)
    tasks_cpu: float  # CPU seconds of the task processes

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


class HyperQueue:
    """The cached HyperQueue venv; ``reason`` says why HyperQueue cannot be measured, if so."""

    def __init__(self) -> None:
        self.venv = CACHE_ROOT / f"hyperqueue-{VERSION}"
        self.python = self.venv / "bin" / "python"
        self.reason = ""

    @property
    def available(self) -> bool:
        return not self.reason

    def setup(self) -> HyperQueue:
        """Create the venv if needed (once; later runs reuse it) and check the namespaces."""
        try:
            self._ensure_venv()
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            self._fail(f"no HyperQueue {VERSION} venv: {exc}")
            return self
        unshare = shutil.which("unshare")
        if unshare is None:
            self._fail("no unshare(1) for a private network namespace (the server binds 0.0.0.0)")
            return self
        probe = subprocess.run(
            [unshare, *NAMESPACES, "true"], capture_output=True, text=True, check=False
        )
        if probe.returncode:
            why = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[0]
            self._fail(
                "no private network namespace for its server, which binds 0.0.0.0 without a "
                f"key (unshare: {why})"
            )
        return self

    def run(self, n: int, slots: int, root: Path, timeout: float = 600.0) -> HQRun | None:
        """Run a warm-up job, then ``n`` ``/bin/true`` tasks on ``slots`` cores; None if it
        could not be measured (``reason`` says why, and it is printed)."""
        if not self.available:
            return None
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="hq-", dir=root))
        out, log = work / "result.json", work / "hq.log"
        args = {"n": n, "slots": slots, "warmup": WARMUP, "root": str(work), "out": str(out)}
        unshare = shutil.which("unshare") or "unshare"
        argv = [unshare, *NAMESPACES, str(self.python), "-c", RUNNER, json.dumps(args)]
        # TMPDIR: the cluster leaves a Unix socket (hq-lc-*) there, removed with ``work``.
        env = {**os.environ, "TQDM_DISABLE": "1", "TMPDIR": str(work)}
        try:
            with open(log, "wb") as sink:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=sink,
                    env=env,
                    cwd=work,
                    start_new_session=True,
                )
                try:
                    code = proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    code = None
            if code != 0 or not out.exists():
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                what = "timed out" if code is None else f"exit status {code}"
                self._fail(f"the HyperQueue run failed ({what}): {' | '.join(tail)}")
                return None
            result = HQRun(**json.loads(out.read_text()))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if result.failed:
            self._fail(f"{result.failed} of {n} HyperQueue tasks failed")
            return None
        return result

    def _fail(self, reason: str) -> None:
        self.reason = reason
        print(f"HyperQueue not measured: {reason}", file=sys.stderr)

    def _ensure_venv(self) -> None:
        stamp = self.venv / ".jobmill-bench-complete"
        CACHE_ROOT.mkdir(parents=True, exist_ok=True)
        with open(CACHE_ROOT / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another bench run may be creating it
            if stamp.exists() and self._check():
                return
            shutil.rmtree(self.venv, ignore_errors=True)  # absent, half-made or stale
            print(f"(creating {self.venv} with hyperqueue=={VERSION}, once)", file=sys.stderr)
            subprocess.run(
                [sys.executable, "-m", "venv", str(self.venv)],
                capture_output=True,
                check=True,
                timeout=120,
            )
            pip = subprocess.run(
                [
                    str(self.python),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--quiet",
                    f"hyperqueue=={VERSION}",
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
            if pip.returncode or not self._check():
                errors = [x for x in pip.stderr.splitlines() if x.startswith("ERROR")]
                shutil.rmtree(self.venv, ignore_errors=True)
                why = errors[-1].removeprefix("ERROR: ") if errors else "hyperqueue not importable"
                raise RuntimeError(f"pip install failed: {why}")
            stamp.touch()

    def _check(self) -> bool:
        """Whether the venv's Python runs and imports the pinned HyperQueue."""
        code = (
            "import importlib.metadata as m, hyperqueue; "
            f"assert m.version('hyperqueue') == {VERSION!r}"
        )
        argv = [str(self.python), "-c", code]
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError):
            return False
        return proc.returncode == 0
