"""The HTCondor executor: each job is one proc of a cluster in an HTCondor schedd.

It talks to the schedd through the official Python bindings (``htcondor2``, the ``htcondor``
wheel, installed with ``pip install 'jobmill[htcondor]'``), never through ``condor_*`` commands.
The bindings are imported lazily, so jobmill runs without them when this executor is off.

- ``render`` builds the submit description; ``submit`` submits exactly that text, one
  transaction per job (``submit_many`` puts many jobs in one cluster and one transaction).
- ``poll`` makes ONE ``Schedd.query`` for every jobmill job in the queue and, only when some
  tracked jobs have left the queue, ONE ``Schedd.history`` for those (their exit codes).
  A job found in neither is ``lost`` (ERROR) once it has been missing for ``LOST_AFTER`` polls.
- Every job carries ``JobmillJobId``, so ``find`` can recover a submission whose cluster id was
  never recorded (jobmill stopped between ``submit`` and writing the id).

User values (argv, environment) reach the job as data: they are quoted with HTCondor's
new-style ``arguments``/``environment`` syntax, and every ``$`` is escaped so neither the submit
macro language (``$(NAME)``) nor match-time substitution (``$$(Attr)``) can rewrite them.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from jobmill.domain.lifecycle import ENDED, Phase
from jobmill.executors.base import ExecutorUnavailable, LaunchSpec, NativeStatus

TAG = "JobmillJobId"
EVENT_LOG = ".jobmill-condor.log"
LOST_AFTER = 2  # consecutive polls a job may be missing from queue and history before "lost"
HISTORY_MARGIN = 300  # s: history lookups stop at records older than this before a job was seen
ENV_EXECUTABLE = "/usr/bin/env"  # runs a bare command name through the job's own PATH
PROJECTION = [
    "ClusterId",
    "ProcId",
    "JobStatus",
    "ExitCode",
    "ExitBySignal",
    "ExitSignal",
    "HoldReason",
    "RemoveReason",
    TAG,
]

# HTCondor JobStatus -> (phase, native state name). Exit codes, signals, hold and remove
# reasons refine it in ``status_from_ad``.
STATES: dict[int, tuple[Phase, str]] = {
    1: (Phase.QUEUED, "idle"),
    2: (Phase.EXECUTING, "running"),
    3: (Phase.ABORTED, "removed"),
    4: (Phase.COMPLETED, "completed"),
    5: (Phase.HELD, "held"),
    6: (Phase.EXECUTING, "transferring output"),
    7: (Phase.SUSPENDED, "suspended"),
}

_ENDED = ENDED
_NATIVE_ID = re.compile(r"^(\d+)\.(\d+)$")
_DOLLARS = re.compile(r"\$+")
_DOLLAR_MACRO = re.compile(r"\$\(dollar\)", re.IGNORECASE)
_BAD_ENV_NAME = re.compile(r"[\s=$'\"]")
_EXTRA_LINE = re.compile(r"^\s*(\+|MY\.)?[A-Za-z_][A-Za-z0-9_.]*\s*=")
T = TypeVar("T")


class SubmitRejected(OSError):
    """HTCondor cannot take this job as described (the job fails; retrying will not help).

    An ``OSError``, so the engine records it as "cannot start the job: ..." and moves on.
    """

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.strerror = why


# -- the submit language --------------------------------------------------------------------


def escape_macros(value: str) -> str:
    """``value`` with every ``$`` protected from HTCondor's two rounds of substitution.

    A run of dollars becomes ``$$(DOLLARDOLLAR)`` per pair (match time gives back ``$$``) and
    ``$(DOLLAR)`` for an odd one left over (submit time gives back ``$``), pairs first: that
    order survives both rounds (checked against a 23.9 schedd). The one text this cannot carry
    is ``$(DOLLAR)`` itself, which submit expands again: it is refused.
    """
    if _DOLLAR_MACRO.search(value):
        raise ValueError("HTCondor cannot pass the text '$(DOLLAR)' through a submit description")

    def dollars(match: re.Match[str]) -> str:
        count = len(match.group(0))
        return "$$(DOLLARDOLLAR)" * (count // 2) + "$(DOLLAR)" * (count % 2)

    return _DOLLARS.sub(dollars, value)


def _one_line(value: str, what: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"HTCondor cannot pass a newline or NUL in {what}: {value[:60]!r}")
    return value


def _quote_word(word: str) -> str:
    """One word of the new-style syntax: single-quoted, ``'`` and ``"`` doubled."""
    return "'" + word.replace("'", "''").replace('"', '""') + "'"


def quote_arguments(argv: Sequence[str]) -> str:
    """The value of ``arguments`` (new syntax) that gives the job exactly ``argv``."""
    words = (_quote_word(_one_line(arg, "an argument")) for arg in argv)
    return escape_macros('"' + " ".join(words) + '"')


def quote_environment(env: Mapping[str, str]) -> str:
    """The value of ``environment`` (new syntax) that gives the job exactly ``env``."""
    words = []
    for name, value in sorted(env.items()):
        if not name or _BAD_ENV_NAME.search(name):
            raise ValueError(f"environment variable name {name!r} cannot be passed to HTCondor")
        words.append(_quote_word(_one_line(f"{name}={value}", f"environment variable {name}")))
    return escape_macros('"' + " ".join(words) + '"')


def classad_string(value: str) -> str:
    """A ClassAd string literal (for constraints; ``escape_macros`` it for a submit line)."""
    text = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + _one_line(text, "an attribute") + '"'


def _value(text: str | Path, what: str) -> str:
    """A plain submit value (a path, a name): one line, dollars escaped."""
    return escape_macros(_one_line(str(text), what))


def executable_and_arguments(spec: LaunchSpec) -> tuple[str, list[str]]:
    """HTCondor runs an executable by path; a bare command name goes through ``env`` so the
    job's PATH (on the execute host) finds it, as it would for a local job."""
    if not spec.argv:
        raise ValueError("the job has no command")
    command, *args = spec.argv
    if command.startswith("/"):
        return command, args
    if "/" in command:
        return str(spec.workdir / command), args
    if "=" in command or command.startswith("-"):
        raise ValueError(f"command name {command!r} cannot be run through {ENV_EXECUTABLE}")
    return ENV_EXECUTABLE, [command, *args]


def event_log(spec: LaunchSpec) -> Path:
    """HTCondor's event log of the job: ``<log_dir>/<job_id>.log`` beside its ``.out`` and
    ``.err`` when the job has a ``log_dir`` (as the OCPS prototype had it), else in its
    working directory."""
    if spec.stdout.suffix == ".out":
        return spec.stdout.with_suffix(".log")
    return spec.workdir / EVENT_LOG


def submit_commands(spec: LaunchSpec) -> list[tuple[str, str]]:
    """The submit commands of one job, in order, values already in submit syntax."""
    executable, args = executable_and_arguments(spec)
    resources = spec.resources
    commands = [
        ("universe", "vanilla"),
        ("executable", _value(Path(executable), "the executable")),
    ]
    if args:
        commands.append(("arguments", quote_arguments(args)))
    commands += [
        ("environment", quote_environment(spec.env)),
        ("initialdir", _value(spec.workdir, "the working directory")),
        ("output", _value(spec.stdout, "the stdout path")),
        ("error", _value(spec.stderr, "the stderr path")),
        ("log", _value(event_log(spec), "the event log path")),
        ("should_transfer_files", "NO"),
        ("request_cpus", str(resources.cpus)),
    ]
    if resources.memory_mb is not None:
        commands.append(("request_memory", f"{resources.memory_mb}MB"))
    if resources.walltime is not None:
        limit = f"(JobStatus == 2) && (time() - JobCurrentStartDate > {resources.walltime})"
        commands.append(("periodic_remove", limit))
    if resources.account:
        commands.append(("accounting_group", _value(resources.account, "the account")))
    commands.append((f"+{TAG}", escape_macros(classad_string(spec.job_id))))
    return commands


def _extra_lines(spec: LaunchSpec) -> list[str]:
    """The job type's ``resources.extra``: submit commands written by an administrator."""
    lines = []
    for line in spec.resources.extra:
        if not _EXTRA_LINE.match(_one_line(line, "resources.extra")):
            raise ValueError(f"resources.extra: {line!r} is not an HTCondor 'command = value' line")
        lines.append(line.strip())
    return lines


def submit_description(spec: LaunchSpec) -> str:
    """The exact submit description ``submit`` hands to the schedd (``condor_submit`` takes it
    as it is). Raises ``ValueError`` for what HTCondor cannot carry."""
    lines = [f"# jobmill job {spec.job_id}"]
    if spec.resources.partition:
        lines.append(f"# partition '{spec.resources.partition}' has no HTCondor meaning: ignored")
    lines += [f"{name} = {value}" for name, value in submit_commands(spec)]
    lines += _extra_lines(spec)
    lines.append("queue")
    return "\n".join(lines) + "\n"


# -- native states ----------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def status_from_ad(ad: Mapping[str, Any]) -> NativeStatus:
    """Map a job ad (from the queue or the history) to a phase, through ``STATES``."""
    code = _int(ad.get("JobStatus"))
    phase, state = STATES.get(code or 0, (Phase.UNKNOWN, f"JobStatus {code}"))
    if phase is Phase.COMPLETED:
        if ad.get("ExitBySignal") is True:
            signal = _int(ad.get("ExitSignal"))
            exit_code = 128 + signal if signal is not None else None
            return NativeStatus(
                Phase.ERROR, state, exit_code=exit_code, error=f"killed by signal {signal}"
            )
        exit_code = _int(ad.get("ExitCode"))
        if exit_code == 0:
            return NativeStatus(Phase.COMPLETED, state, exit_code=0)
        if exit_code is None:
            return NativeStatus(Phase.ERROR, state, error="completed without an exit code")
        return NativeStatus(Phase.ERROR, state, exit_code=exit_code, error=f"exit code {exit_code}")
    if phase is Phase.HELD:
        return NativeStatus(Phase.HELD, state, error=str(ad.get("HoldReason") or "held"))
    if phase is Phase.ABORTED:
        why = str(ad.get("RemoveReason") or "")
        if "PeriodicRemove" in why:  # the job's own policy (walltime) ended it: a failure
            return NativeStatus(Phase.ERROR, state, error=f"removed by HTCondor: {why}")
        return NativeStatus(
            Phase.ABORTED, state, error=f"removed from HTCondor: {why or 'no reason given'}"
        )
    return NativeStatus(phase, state)


def split_native_id(native_id: str) -> tuple[int, int] | None:
    match = _NATIVE_ID.match(native_id)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _ids_constraint(ids: Iterable[tuple[int, int]]) -> str:
    """A constraint matching exactly these (cluster, proc) pairs."""
    by_cluster: dict[int, list[int]] = {}
    for cluster, proc in ids:
        by_cluster.setdefault(cluster, []).append(proc)
    if all(procs == [0] for procs in by_cluster.values()):
        return f"ProcId == 0 && member(ClusterId, {{{', '.join(map(str, sorted(by_cluster)))}}})"
    parts = [
        f"(ClusterId == {cluster} && member(ProcId, {{{', '.join(map(str, sorted(procs)))}}}))"
        for cluster, procs in sorted(by_cluster.items())
    ]
    return " || ".join(parts)


def _native_id(ad: Mapping[str, Any]) -> str:
    return f"{ad['ClusterId']}.{ad['ProcId']}"


# -- the executor -----------------------------------------------------------------------------


class HTCondorExecutor:
    """Runs jobs in an HTCondor pool through one schedd (``JOBMILL_CONDOR_SCHEDD``)."""

    name = "htcondor"

    def __init__(
        self,
        schedd: str | None = None,
        collector: str | None = None,
        *,
        connect: Callable[[], Any] | None = None,
    ) -> None:
        """``schedd`` and ``collector`` name the schedd and pool (the HTCondor configuration's
        defaults when None); ``connect`` returns a schedd object (tests, benchmarks)."""
        self.schedd_name = schedd
        self.collector = collector
        self._connect = connect or self._locate
        self._schedd: Any = None
        self._lock = threading.Lock()
        self._missing: dict[str, int] = {}
        self._seen: dict[str, float] = {}  # native id -> when it was last seen in the queue

    # -- talking to the schedd

    def _locate(self) -> Any:
        htcondor = bindings()
        if self.schedd_name is None and self.collector is None:
            return htcondor.Schedd()
        pool = htcondor.Collector(self.collector) if self.collector else htcondor.Collector()
        found = pool.locate(htcondor.DaemonType.Schedd, self.schedd_name)
        if found is None:  # Schedd(None) would quietly be the local schedd
            raise LookupError(f"the pool has no schedd named '{self.schedd_name}'")
        return htcondor.Schedd(found)

    def _call(self, what: str, call: Callable[[Any], T]) -> T:
        """Run one schedd call; errors of the bindings become ``ExecutorUnavailable``."""
        with self._lock:
            try:
                if self._schedd is None:
                    self._schedd = self._connect()
                return call(self._schedd)
            except SubmitRejected:
                raise
            except Exception as exc:  # HTCondorException, RuntimeError of the bindings...
                self._schedd = None  # locate it again next time (it may have moved)
                raise ExecutorUnavailable(f"HTCondor schedd ({what}): {exc}") from exc

    # -- the protocol

    def render(self, spec: LaunchSpec) -> str:
        return submit_description(spec)

    def submit(self, spec: LaunchSpec) -> str:
        try:
            text = submit_description(spec)
        except ValueError as exc:
            raise SubmitRejected(str(exc)) from None
        _make_dirs(spec)
        submitted = time.time()
        result = self._call("submit", lambda schedd: _submit(schedd, text))
        native_id = f"{result.cluster()}.{result.first_proc()}"
        self._seen[native_id] = submitted
        return native_id

    def batch_key(self, spec: LaunchSpec) -> Hashable:
        return batch_key(spec)

    def submit_many(self, specs: Sequence[LaunchSpec]) -> list[str]:
        """Submit every spec as one proc of a single cluster, in one schedd transaction.

        All specs must share a ``batch_key`` (the same submit commands and ``resources.extra``;
        only values differ): group them with it first. Returns the native ids in order.
        """
        if not specs:
            return []
        if len({batch_key(spec) for spec in specs}) > 1:
            raise ValueError("submit_many: the jobs differ in batch_key; group them first")
        try:
            rows = [_item_commands(spec) for spec in specs]
            extra = _extra_lines(specs[0])
        except ValueError as exc:
            raise SubmitRejected(str(exc)) from None
        keys = list(rows[0])
        items = [{_item_name(key): row[key] for key in keys} for row in rows]
        template = [f"{key} = $({_item_name(key)})" for key in keys] + extra + ["queue"]
        for spec in specs:
            _make_dirs(spec)
        text = "\n".join(template) + "\n"
        submitted = time.time()
        result = self._call("submit", lambda schedd: _submit(schedd, text, items))
        first = result.first_proc()
        ids = [f"{result.cluster()}.{first + n}" for n in range(len(specs))]
        self._seen.update(dict.fromkeys(ids, submitted))
        return ids

    def poll(self, native_ids: Sequence[str]) -> dict[str, NativeStatus]:
        statuses: dict[str, NativeStatus] = {}
        valid: dict[str, tuple[int, int]] = {}
        for nid in native_ids:
            ids = split_native_id(nid)
            if ids is None:
                statuses[nid] = _lost(f"'{nid}' is not an HTCondor job id")
            else:
                valid[nid] = ids
        self._forget_untracked(valid)
        if not valid:
            return statuses
        asked = time.time()
        queue = self._call(
            "query",
            lambda schedd: schedd.query(constraint=f"{TAG} =!= undefined", projection=PROJECTION),
        )
        seen = {_native_id(ad): ad for ad in queue}
        gone = [nid for nid in valid if nid not in seen]
        history = self._history(gone, valid) if gone else {}
        for nid in valid:
            ad = seen.get(nid) or history.get(nid)
            if ad is None:
                statuses[nid] = self._missed(nid)
                continue
            self._missing.pop(nid, None)
            statuses[nid] = status = status_from_ad(ad)
            if status.phase in _ENDED:
                self._seen.pop(nid, None)
            elif nid in seen:
                self._seen[nid] = asked
        return statuses

    def _history(self, gone: list[str], ids: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
        """ONE history lookup for the jobs that left the queue. It reads the newest records
        first and stops once every job is found or, when jobmill saw them all in the queue,
        at records older than that (less ``HISTORY_MARGIN``): a lost job costs no full scan."""
        constraint = _ids_constraint(ids[nid] for nid in gone)
        options: dict[str, Any] = {"match": len(gone)}
        if all(nid in self._seen for nid in gone):
            oldest = min(self._seen[nid] for nid in gone) - HISTORY_MARGIN
            options["since"] = _expression(f"EnteredCurrentStatus < {int(oldest)}")
        ads = self._call(
            "history",
            lambda schedd: schedd.history(constraint=constraint, projection=PROJECTION, **options),
        )
        return {_native_id(ad): ad for ad in ads}

    def _missed(self, nid: str) -> NativeStatus:
        """In neither queue nor history: maybe between the two (wait one poll), else lost."""
        misses = self._missing.get(nid, 0) + 1
        if misses < LOST_AFTER:
            self._missing[nid] = misses
            return NativeStatus(Phase.UNKNOWN, "missing")
        self._missing.pop(nid, None)
        self._seen.pop(nid, None)
        return _lost("the job left the HTCondor queue without a history record")

    def _forget_untracked(self, tracked: Mapping[str, object]) -> None:
        """Keep the bookkeeping to the jobs still asked about (the engine asks for all)."""
        books: tuple[dict[str, Any], ...] = (self._seen, self._missing)
        for book in books:
            if len(book) > 2 * len(tracked) + 100:
                for nid in [nid for nid in book if nid not in tracked]:
                    del book[nid]

    def cancel(self, native_id: str) -> None:
        """Remove the job: HTCondor stops it (SIGTERM, then SIGKILL) and drops it from the queue."""
        if split_native_id(native_id) is None:
            return
        self._call(
            "remove",
            lambda schedd: schedd.act(
                # A (text, code) pair: htcondor2 25.x silently drops a plain-string reason.
                bindings().JobAction.Remove,
                [native_id],
                reason=("aborted through jobmill", 0),
            ),
        )

    def hold(self, native_id: str, reason: str) -> None:
        """Hold an *idle* job (``JobAction.Hold`` with ``reason`` as its ``HoldReason``).

        The constraint asks for ``JobStatus == 1`` so the schedd itself refuses a job that
        started meanwhile (HTCondor would otherwise stop it): ``SubmitRejected`` then.
        """
        ids = split_native_id(native_id)
        if ids is None:
            raise SubmitRejected(f"'{native_id}' is not an HTCondor job id")
        idle = f"ClusterId == {ids[0]} && ProcId == {ids[1]} && JobStatus == 1"
        self._act("Hold", idle, reason, f"HTCondor job {native_id} is not idle: not held")

    def release(self, native_id: str, reason: str) -> None:
        """Release a held job (``JobAction.Release``): it becomes idle again."""
        if split_native_id(native_id) is None:
            raise SubmitRejected(f"'{native_id}' is not an HTCondor job id")
        self._act("Release", [native_id], reason, f"HTCondor job {native_id} is not held")

    def _act(self, action: str, spec: str | list[str], reason: str, refused: str) -> None:
        """One ``Schedd.act``; no job changed (``TotalSuccess`` 0) raises ``SubmitRejected``.

        The reason goes as ``(text, code)``: the 25.x bindings drop a plain string reason
        (the schedd then records an empty ``HoldReason``). The schedd appends ``(by user X)``.
        """
        why = (reason, 0) if reason else None
        result = self._call(
            action.lower(),
            lambda schedd: schedd.act(getattr(bindings().JobAction, action), spec, reason=why),
        )
        done = _int(result.get("TotalSuccess")) if result is not None else None
        if done == 0:
            raise SubmitRejected(refused)

    def tick(self) -> float | None:
        return None  # HTCondor escalates kills itself

    def watch_fds(self) -> dict[int, str]:
        return {}

    def find(self, job_id: str) -> str | None:
        constraint = f"{TAG} == {classad_string(job_id)}"
        ads = self._call(
            "query", lambda schedd: schedd.query(constraint=constraint, projection=PROJECTION)
        )
        if not ads:
            ads = self._call(
                "history",
                lambda schedd: schedd.history(
                    constraint=constraint, projection=PROJECTION, match=1
                ),
            )
        return _native_id(ads[0]) if ads else None

    def details(self, native_id: str) -> str:
        """The job ad, as ``condor_q -l`` (or ``condor_history -l``) prints it."""
        ids = split_native_id(native_id)
        if ids is None:
            return f"'{native_id}' is not an HTCondor job id\n"
        constraint = f"ClusterId == {ids[0]} && ProcId == {ids[1]}"
        ads = self._call("query", lambda schedd: schedd.query(constraint=constraint))
        where = "in the queue"
        if not ads:
            ads = self._call("history", lambda schedd: schedd.history(constraint, [], match=1))
            where = "in the history"
        if not ads:
            return f"HTCondor job {native_id}: not in the queue nor in the history\n"
        return f"# HTCondor job {native_id} ({where})\n" + ads[0].printOld()

    def close(self) -> None:
        with self._lock:
            self._schedd = None


def batch_key(spec: LaunchSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Jobs with equal keys can share one cluster (``submit_many``)."""
    try:
        return tuple(_item_commands(spec)), tuple(spec.resources.extra)
    except ValueError:
        return ("invalid", spec.job_id), ()


def _item_commands(spec: LaunchSpec) -> dict[str, str]:
    commands = dict(submit_commands(spec))
    commands.setdefault("arguments", '""')
    return commands


def _item_name(key: str) -> str:
    return "jm_" + re.sub(r"[^A-Za-z0-9]", "_", key.lstrip("+")).lower()


def _submit(schedd: Any, text: str, items: list[dict[str, str]] | None = None) -> Any:
    """One schedd transaction; a description HTCondor refuses raises ``SubmitRejected``."""
    htcondor = bindings()
    try:
        description = htcondor.Submit(text)
    except ValueError as exc:
        raise SubmitRejected(f"HTCondor refused the submit description: {exc}") from None
    try:
        if items is None:
            return schedd.submit(description)
        return schedd.submit(description, itemdata=iter(items))
    except ValueError as exc:
        raise SubmitRejected(f"HTCondor refused the job: {exc}") from None
    except Exception as exc:
        if "errmsg=Submit:" in str(exc):  # the submit language, not the connection, failed
            raise SubmitRejected(f"HTCondor refused the job: {exc}") from None
        raise


def _expression(text: str) -> Any:
    """A ClassAd expression object (23.x bindings read a plain ``since`` string as a job id)."""
    try:
        import classad2
    except ImportError:  # the fake schedd of the unit tests
        return text
    return classad2.ExprTree(text)


def _make_dirs(spec: LaunchSpec) -> None:
    for directory in {spec.workdir, spec.stdout.parent, spec.stderr.parent}:
        directory.mkdir(parents=True, exist_ok=True)


def _lost(why: str) -> NativeStatus:
    return NativeStatus(Phase.ERROR, "lost", error=f"lost: {why}")


def bindings() -> Any:
    """The ``htcondor2`` module (imported on first use: it is an optional dependency)."""
    try:
        import htcondor2
    except ImportError as exc:
        raise ExecutorUnavailable(
            "the HTCondor Python bindings are not installed: pip install 'jobmill[htcondor]'"
        ) from exc
    return htcondor2


def configured(schedd: str | None, collector: str | None) -> HTCondorExecutor:
    """The executor for ``JOBMILL_EXECUTORS=...,htcondor``; ``ValueError`` says what is missing."""
    import importlib.util

    if importlib.util.find_spec("htcondor2") is None:
        raise ValueError(
            "JOBMILL_EXECUTORS: the 'htcondor' executor needs the HTCondor Python bindings "
            "(import htcondor2): pip install 'jobmill[htcondor]'"
        )
    if os.geteuid() == 0:
        raise ValueError(
            "JOBMILL_EXECUTORS: the 'htcondor' executor cannot run as root: HTCondor refuses "
            "jobs owned by root; run jobmill as an ordinary user"
        )
    return HTCondorExecutor(schedd, collector)
