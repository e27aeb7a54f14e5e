"""The SIGKILL soak: many short jobs through two ``jobmill api`` processes and two ``jobmill
engine`` processes on one database, while a random one of the four is killed with SIGKILL every
few seconds and started again after a short delay, as systemd's ``Restart=always`` does.

Each job has a unique name (also its ``run_id``) and its command appends that name to one shared
log file (``O_APPEND``) and exits. Submitters post the jobs through both API processes in turn.
``POST /api/v1/jobs`` has no idempotency key, so a submission whose answer was lost (its API
process died while it was being answered) is looked up by its ``run_id`` on a live API process
before it is sent again: a job is created once and never dropped.

At the end, when every job is final, the soak checks: every name has exactly one job, every job
COMPLETED, every name in the log exactly once (nothing lost, nothing run twice) and every job's
event history possible (``tests/replay.py``). ``tests/e2e/test_soak.py`` runs a small soak,
``bench/bench_soak.py`` the full one with its figures.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import bindparam, create_engine, text

from jobmill.domain.lifecycle import ENDED
from tests.conftest import local_headers
from tests.e2e.test_multiprocess import Process, Site
from tests.replay import impossible_steps

JOBTYPE = "soak"
FINAL = tuple(sorted(str(phase) for phase in ENDED))


def write_jobtype(types: Path) -> Path:
    """The soak's job type in ``types``: append the job's name to the log, exit."""
    types.mkdir(parents=True, exist_ok=True)
    (types / f"{JOBTYPE}.yaml").write_text(
        f"name: {JOBTYPE}\n"
        'command: ["/bin/sh", "-c", "echo \\"$1\\" >> \\"$2\\"", "soak", "{name}", "{log}"]\n'
        "parameters:\n"
        "  name: {type: string, required: true}\n"
        "  log: {type: path, required: true}\n"
    )
    return types


@dataclass(frozen=True)
class SoakConfig:
    jobs: int = 10_000
    submitters: int = 4
    rate: float | None = 25.0  # jobs/s submitted at most, so that submission spans the kills
    kill_every: tuple[float, float] = (2.0, 4.0)  # seconds between two kills, drawn uniformly
    max_kills: int = 100
    min_kills: int = 0  # kill on (within the window) until this many, even once all jobs ended
    kill_window: float = 900.0  # no kill later than this many seconds after the start
    restart_delay: float = 1.0  # systemd's RestartSec
    final_timeout: float = 600.0  # once killing is over, the longest wait for the last job
    max_local_jobs: int = 8
    seed: int | None = None


@dataclass
class Kill:
    at: float  # seconds since the start of the soak
    process: str  # api0, api1, engine0, engine1
    kind: str  # api, engine (lease holder), engine (standby)
    pid: int
    takeover: float | None = None  # lease holder killed: seconds until a new holder
    standby_ready: bool = False  # ... while the other engine stood by (not itself restarting)


@dataclass
class SoakResult:
    config: SoakConfig
    names: list[str]
    seed: int = 0
    kills: list[Kill] = field(default_factory=list)
    submit_seconds: float = 0.0
    total_seconds: float = 0.0
    answers_lost: int = 0  # submissions whose outcome was unknown (connection lost, 5xx)
    found_after_loss: int = 0  # ... of which the job had been created after all
    refused: int = 0  # submissions refused at connect (API process down): sent elsewhere
    unsubmitted: list[str] = field(default_factory=list)
    jobs: dict[str, list[tuple[str, str, str | None]]] = field(default_factory=dict)
    log_counts: Counter[str] = field(default_factory=Counter)
    # jobs handed to their executor more than once: more than one ``start`` event, or (a local
    # job, handed to the shepherd while QUEUED) more than one ``wait``
    multi_start: int = 0
    impossible: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # harness trouble (a restart that failed)

    @property
    def created(self) -> int:
        return sum(len(found) for found in self.jobs.values())

    @property
    def created_twice(self) -> list[str]:
        return sorted(name for name, found in self.jobs.items() if len(found) > 1)

    @property
    def final(self) -> int:
        return sum(phase in FINAL for found in self.jobs.values() for _, phase, _ in found)

    @property
    def completed(self) -> int:
        return sum(phase == "COMPLETED" for found in self.jobs.values() for _, phase, _ in found)

    @property
    def lost(self) -> list[str]:
        """Names with no job, or whose job did not complete, or that never ran."""
        return sorted(
            name
            for name in self.names
            if not self.jobs.get(name)
            or any(phase != "COMPLETED" for _, phase, _ in self.jobs[name])
            or self.log_counts[name] == 0
        )

    @property
    def ran_twice(self) -> list[str]:
        return sorted(name for name, count in self.log_counts.items() if count > 1)

    @property
    def strangers(self) -> list[str]:
        """Names in the log that no submission used."""
        wanted = set(self.names)
        return sorted(name for name in self.log_counts if name not in wanted)

    def kills_of(self, kind: str) -> int:
        return sum(kill.kind == kind for kill in self.kills)

    @property
    def takeovers(self) -> list[float]:
        return [kill.takeover for kill in self.kills if kill.takeover is not None]

    def takeovers_when(self, ready: bool) -> list[float]:
        """Take-over times when the other engine stood by (``ready``) or was itself restarting
        (then the time includes its start-up)."""
        return [
            kill.takeover
            for kill in self.kills
            if kill.takeover is not None and kill.standby_ready == ready
        ]

    def problems(self) -> list[str]:
        """What went wrong; empty when nothing was lost, doubled or stuck."""
        found: list[str] = []

        def add(what: str, names: Sequence[str]) -> None:
            if names:
                found.append(f"{len(names)} {what}: {', '.join(names[:10])}")

        add("submissions never accepted", self.unsubmitted)
        add("names created twice", self.created_twice)
        add("jobs lost (no job, not COMPLETED, or never ran)", self.lost)
        add("jobs run twice", self.ran_twice)
        add("unknown names in the log", self.strangers)
        stuck = sorted(
            f"{job_id} ({phase})"
            for found_jobs in self.jobs.values()
            for job_id, phase, _ in found_jobs
            if phase not in FINAL
        )
        add("jobs not final", stuck)
        failed = sorted(
            f"{job_id} ({phase}: {error})"
            for found_jobs in self.jobs.values()
            for job_id, phase, error in found_jobs
            if phase in FINAL and phase != "COMPLETED"
        )
        add("jobs ended but not COMPLETED", failed)
        add("impossible job histories", self.impossible)
        add("harness errors", self.errors)
        return found

    def rows(self) -> list[tuple[str, Any]]:
        """The figures, one (name, value) a row."""

        def spread(values: list[float]) -> str:
            if not values:
                return "-"
            middle = statistics.median(values)
            return f"{min(values):.2f} / {middle:.2f} / {max(values):.2f} ({len(values)})"

        return [
            ("jobs submitted", len(self.names)),
            ("jobs created", self.created),
            ("jobs final", self.final),
            ("jobs COMPLETED", self.completed),
            ("jobs lost", len(self.lost)),
            ("jobs run twice", len(self.ran_twice)),
            ("names created twice", len(self.created_twice)),
            ("jobs requeued (engine killed before the spawn)", self.multi_start),
            ("answers lost (looked up)", self.answers_lost),
            ("... job found created", self.found_after_loss),
            ("refused at connect (resent)", self.refused),
            ("kills: api", self.kills_of("api")),
            ("kills: engine (lease holder)", self.kills_of("engine holder")),
            ("kills: engine (standby)", self.kills_of("engine standby")),
            (
                "take-over s, standby ready: min / median / max (n)",
                spread(self.takeovers_when(True)),
            ),
            ("take-over s, standby (re)starting", spread(self.takeovers_when(False))),
            ("submission s", self.submit_seconds),
            ("total s (to the last final job)", self.total_seconds),
            ("jobs/s (end to end)", len(self.names) / self.total_seconds),
        ]


class Soak:
    """Runs one soak on ``db_url`` (an empty database) in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        db_url: str,
        config: SoakConfig,
        say: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.config = config
        self.say = say
        self.site = Site(workdir, write_jobtype(workdir / "types"), db_url)
        seed = config.seed if config.seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(seed)
        self.names = [f"soak{i:06d}" for i in range(config.jobs)]
        self.result = SoakResult(config, self.names, seed)
        self.lock = threading.Lock()
        self.down: set[Process] = set()  # killed, not yet restarted
        self.log_start: dict[Process, int] = {}  # where each process's log of its run starts
        self.restarts: list[threading.Thread] = []
        self.watchers: list[threading.Thread] = []
        self.stop_killing = threading.Event()
        self.closing = threading.Event()  # the soak is over (or interrupted): stop everything
        self.started = 0.0

    # -- processes --------------------------------------------------------------------------

    def start(self) -> None:
        env = {"JOBMILL_MAX_LOCAL_JOBS": str(self.config.max_local_jobs)}
        self.apis = [self.site.start("api", **env) for _ in range(2)]
        self.engines = [self.site.start("engine", **env) for _ in range(2)]
        self.labels = {p: f"api{i}" for i, p in enumerate(self.apis)}
        self.labels.update({p: f"engine{i}" for i, p in enumerate(self.engines)})
        for engine in self.engines:
            self._wait_engine(engine)

    def _said(self, process: Process, *words: bytes) -> bool:
        """Whether ``process`` logged one of ``words`` since its last start."""
        with process.log.open("rb") as log:
            log.seek(self.log_start.get(process, 0))
            said = log.read()
        return any(word in said for word in words)

    def _wait_engine(self, engine: Process) -> None:
        """Wait until a started engine has taken the lease or stands by: only then is it a
        lease holder or a standby to kill (before, it is a process starting up)."""
        deadline = time.monotonic() + 60
        while not self._said(engine, b"standing by", b" taken by "):
            assert engine.proc is not None
            if engine.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(engine.log.read_text()[-3000:])
            time.sleep(0.1)

    def close(self) -> None:
        self.stop_killing.set()
        self.closing.set()
        for thread in self.restarts + self.watchers:
            thread.join()
        self.site.close()

    # -- the killer -------------------------------------------------------------------------

    def _killer(self) -> None:
        """SIGKILL one process every ``kill_every`` seconds: the four in a shuffled round each,
        so every round kills each API process once and the lease holder at least once."""
        low, high = self.config.kill_every
        bag: list[Process] = []
        while len(self.result.kills) < self.config.max_kills:
            if self.stop_killing.wait(self.rng.uniform(low, high)):
                return
            if time.monotonic() - self.started > self.config.kill_window:
                return
            if not bag:
                bag = [*self.apis, *self.engines]
                self.rng.shuffle(bag)
            with self.lock:
                victim = next((p for p in bag if p not in self.down), None)
                if victim is None:
                    continue
                bag.remove(victim)
                self.down.add(victim)
            self._kill(victim)

    def _standing_by(self, engine: Process) -> bool:
        """Whether ``engine`` runs and has said it stands by since its last start."""
        with self.lock:
            if engine in self.down:
                return False
        return self._said(engine, b"standing by")

    def _kill(self, victim: Process) -> None:
        holder = self.site.lease_holder_pid()
        others = [e for e in self.engines if e is not victim]
        ready = victim.command == "engine" and all(self._standing_by(e) for e in others)
        pid = victim.pid
        victim.kill()
        killed_at = time.monotonic()
        if victim.command == "api":
            kind = "api"
        else:
            kind = "engine holder" if holder == pid else "engine standby"
        kill = Kill(killed_at - self.started, self.labels[victim], kind, pid, None, ready)
        self.result.kills.append(kill)
        standby = "" if kind != "engine holder" else ", standby ready" if ready else ", no standby"
        self.say(f"{kill.at:7.1f} s  SIGKILL {kill.process} (pid {pid}, {kind}{standby})")
        if kind == "engine holder":
            watcher = threading.Thread(target=self._watch_takeover, args=(kill, killed_at))
            watcher.start()
            self.watchers.append(watcher)
        restart = threading.Thread(target=self._restart, args=(victim,))
        restart.start()
        self.restarts.append(restart)

    def _watch_takeover(self, kill: Kill, killed_at: float) -> None:
        deadline = killed_at + 60
        while time.monotonic() < deadline and not self.closing.is_set():
            holder = self.site.lease_holder_pid()
            if holder is not None and holder != kill.pid:
                kill.takeover = time.monotonic() - killed_at
                self.say(
                    f"{kill.at:7.1f} s  lease of {kill.process} taken over in "
                    f"{kill.takeover:.2f} s by pid {holder}"
                )
                return
            time.sleep(0.02)
        if not self.closing.is_set():
            self.result.errors.append(f"no engine took the lease within 60 s of killing {kill.pid}")

    def _restart(self, victim: Process) -> None:
        """Start a killed process again after the restart delay; an attempt that does not come
        up (exits, or does not answer in time) is killed before the next one."""
        if self.closing.wait(self.config.restart_delay):
            return
        for attempt in range(3):
            if self.closing.is_set():
                return
            try:
                self.log_start[victim] = victim.log.stat().st_size
                victim.start()  # an API process: until it answers /healthz
                if victim.command == "engine":
                    self._wait_engine(victim)
            except AssertionError as exc:  # exited at start-up or never answered
                assert victim.proc is not None
                if victim.proc.poll() is None:
                    victim.kill()
                if attempt == 2:
                    self.result.errors.append(f"{self.labels[victim]} did not restart: {exc}")
                    return  # stays down: never killed again
                time.sleep(1.0)
            else:
                break
        with self.lock:
            self.down.discard(victim)

    # -- the submitters ---------------------------------------------------------------------

    def _submitter(self, todo: list[int], headers: dict[str, str]) -> None:
        clients = [httpx.Client(base_url=api.url, headers=headers, timeout=30) for api in self.apis]
        try:
            while not self.closing.is_set():
                with self.lock:
                    if not todo:
                        return
                    index = todo.pop()
                if self.config.rate:  # job i is sent no earlier than i / rate after the start
                    time.sleep(max(0.0, self.started + index / self.config.rate - time.monotonic()))
                self._submit(clients, index)
        finally:
            for client in clients:
                client.close()

    def _submit(self, clients: list[httpx.Client], index: int) -> None:
        name = self.names[index]
        body = {"type": JOBTYPE, "run_id": name, "parameters": {"name": name, "log": self.log}}
        turn = index % len(clients)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not self.closing.is_set():
            client = clients[turn]
            turn = (turn + 1) % len(clients)
            try:
                response = client.post("/api/v1/jobs", json=body)
            except httpx.ConnectError:  # the process is down: nothing was sent
                with self.lock:
                    self.result.refused += 1
                time.sleep(0.05)
                continue
            except httpx.TransportError:
                pass  # sent, the answer lost: look it up
            else:
                if response.status_code == 201:
                    return
                if response.status_code < 500:
                    raise AssertionError(f"{name}: {response.status_code} {response.text}")
            with self.lock:
                self.result.answers_lost += 1
            found = self._lookup(clients, name, deadline)
            if found:
                with self.lock:
                    self.result.found_after_loss += 1
                return
        with self.lock:
            self.result.unsubmitted.append(name)

    def _lookup(self, clients: list[httpx.Client], name: str, deadline: float) -> bool:
        """Whether a job named ``name`` exists, asked of any API process that answers. Waits
        half a second first: a creation the dead process had already committed is visible."""
        time.sleep(0.5)
        turn = 0
        while time.monotonic() < deadline and not self.closing.is_set():
            client = clients[turn]
            turn = (turn + 1) % len(clients)
            try:
                response = client.get("/api/v1/jobs", params={"run_id": name})
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if response.status_code == 200:
                return bool(response.json()["jobs"])
            time.sleep(0.1)
        return False

    # -- the run ----------------------------------------------------------------------------

    def _unfinished(self) -> int:
        query = text(
            "SELECT count(*) FROM jobs WHERE type = :type AND phase NOT IN :final"
        ).bindparams(bindparam("final", expanding=True))
        with self.site.db.connect() as conn:
            count = conn.execute(query, {"type": JOBTYPE, "final": list(FINAL)}).scalar_one()
        return int(count)

    def run(self) -> SoakResult:
        config = self.config
        self.log = str(self.site.runlog)
        self.start()
        headers = local_headers()
        todo = list(reversed(range(config.jobs)))
        self.started = time.monotonic()
        killer = threading.Thread(target=self._killer, daemon=True)
        killer.start()
        submitters = [
            threading.Thread(target=self._submitter, args=(todo, headers), daemon=True)
            for _ in range(config.submitters)
        ]
        try:
            for thread in submitters:
                thread.start()
            for thread in submitters:
                thread.join()
            self.result.submit_seconds = time.monotonic() - self.started
            self.say(f"{self.result.submit_seconds:7.1f} s  all {config.jobs:,} submitted")
            # Killing goes on while the queue drains, until its bounds or the last final job.
            while killer.is_alive() and (
                self._unfinished() or len(self.result.kills) < config.min_kills
            ):
                killer.join(0.2)
            self.stop_killing.set()
            killer.join()
            for thread in self.restarts:
                thread.join(60)
            deadline = time.monotonic() + config.final_timeout
            while self._unfinished() and time.monotonic() < deadline:
                time.sleep(0.2)
            self.result.total_seconds = time.monotonic() - self.started
            for watcher in self.watchers:
                watcher.join(60)
        finally:
            self.stop_killing.set()
        self._collect()
        return self.result

    def _collect(self) -> None:
        result = self.result
        with self.site.db.connect() as conn:
            rows = conn.execute(
                text("SELECT id, run_id, phase, error FROM jobs WHERE type = :type"),
                {"type": JOBTYPE},
            ).all()
            result.multi_start = int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM (SELECT job_id FROM events"
                        " WHERE name IN ('start', 'wait') GROUP BY job_id"
                        " HAVING sum(CASE WHEN name = 'start' THEN 1 ELSE 0 END) > 1"
                        " OR sum(CASE WHEN name = 'wait' THEN 1 ELSE 0 END) > 1) AS several"
                    )
                ).scalar_one()
            )
        for row in rows:
            result.jobs.setdefault(row.run_id, []).append((row.id, row.phase, row.error))
        if self.site.runlog.exists():
            result.log_counts = Counter(self.site.runlog.read_text().split())
        result.impossible = impossible_steps(self.site.db_url)


def history(db_url: str, job_id: str) -> list[str]:
    """A job's events, one line each (for a report on a lost or doubled job)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT n, at, name, from_phase, to_phase, actor, data FROM events"
                    " WHERE job_id = :id ORDER BY n"
                ),
                {"id": job_id},
            ).all()
    finally:
        engine.dispose()
    return [
        f"{r.n} {r.at:%H:%M:%S.%f} {r.name} {r.from_phase}->{r.to_phase} {r.actor} {r.data}"
        for r in rows
    ]
