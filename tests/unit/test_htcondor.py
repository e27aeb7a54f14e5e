"""The HTCondor executor without a pool: submit descriptions, quoting, the state table, and poll's
one-query-per-interval logic against a fake schedd. (The real pool: tests/integration/.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from jobmill.config import Settings
from jobmill.domain.jobtypes import Resources
from jobmill.domain.lifecycle import Phase
from jobmill.executors import htcondor as hc
from jobmill.executors.base import ExecutorUnavailable, LaunchSpec
from jobmill.executors.htcondor import (
    STATES,
    HTCondorExecutor,
    SubmitRejected,
    escape_macros,
    quote_arguments,
    quote_environment,
    status_from_ad,
    submit_description,
)
from jobmill.executors.registry import build_executors

JOB = "0b5e3d2a-5a8e-4f55-9d55-6f0c1c0a7e11"


def spec(
    argv: list[str] | None = None,
    env: dict[str, str] | None = None,
    resources: Resources | None = None,
    workdir: Path = Path("/tmp/jm/jobs") / JOB,
    job_id: str = JOB,
) -> LaunchSpec:
    return LaunchSpec(
        job_id=job_id,
        argv=argv if argv is not None else ["/usr/bin/python3", "run.py", "a b"],
        env=env if env is not None else {"PATH": "/usr/bin:/bin", "JOBMILL_JOB_ID": job_id},
        workdir=workdir,
        stdout=workdir / "stdout.log",
        stderr=workdir / "stderr.log",
        resources=resources or Resources(),
    )


# -- the submit language ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("plain", "plain"),
        ("$", "$(DOLLAR)"),
        ("$$", "$$(DOLLARDOLLAR)"),
        ("$$$", "$$(DOLLARDOLLAR)$(DOLLAR)"),
        ("$(HOME)", "$(DOLLAR)(HOME)"),
        ("$$(Owner)", "$$(DOLLARDOLLAR)(Owner)"),
        ("$ENV(HOME) x$y", "$(DOLLAR)ENV(HOME) x$(DOLLAR)y"),
        ("$$(DOLLARDOLLAR)", "$$(DOLLARDOLLAR)(DOLLARDOLLAR)"),
    ],
)
def test_every_dollar_is_escaped(value: str, escaped: str) -> None:
    assert escape_macros(value) == escaped


@pytest.mark.parametrize("value", ["$(DOLLAR)", "x$(dollar)y", "$$(Dollar)"])
def test_the_one_text_htcondor_cannot_carry_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=r"\$\(DOLLAR\)"):
        escape_macros(value)


def test_arguments_use_the_new_syntax() -> None:
    quoted = quote_arguments(["a b", "it's", 'say "hi"', "", "tab\there", "\\back", "100%"])
    assert quoted == """"'a b' 'it''s' 'say ""hi""' '' 'tab\there' '\\back' '100%'\""""


def test_arguments_refuse_newlines() -> None:
    with pytest.raises(ValueError, match="newline"):
        quote_arguments(["two\nlines"])
    with pytest.raises(ValueError, match="newline"):
        quote_arguments(["carriage\rreturn"])


def test_environment_uses_the_new_syntax_sorted() -> None:
    env = {"B": "it's", "A": "x y", "C": '"q"', "D": "$(HOME)", "E": ""}
    assert quote_environment(env) == (""""'A=x y' 'B=it''s' 'C=""q""' 'D=$(DOLLAR)(HOME)' 'E='\"""")


@pytest.mark.parametrize("name", ["", "A B", "A=B", "A$", "it's"])
def test_environment_refuses_names_it_cannot_carry(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        quote_environment({name: "x"})


def test_submit_description_golden() -> None:
    resources = Resources(
        cpus=2,
        memory_mb=512,
        walltime=3600,
        partition="short",
        account="astro",
        extra=['+ProjectName = "survey"', 'requirements = (OpSys == "LINUX")'],
    )
    text = submit_description(
        spec(argv=["python3", "{x}", "$(rm -rf /)"], env={"P": "a b"}, resources=resources)
    )
    workdir = f"/tmp/jm/jobs/{JOB}"
    assert text == (
        f"# jobmill job {JOB}\n"
        "# partition 'short' has no HTCondor meaning: ignored\n"
        "universe = vanilla\n"
        "executable = /usr/bin/env\n"
        "arguments = \"'python3' '{x}' '$(DOLLAR)(rm -rf /)'\"\n"
        "environment = \"'P=a b'\"\n"
        f"initialdir = {workdir}\n"
        f"output = {workdir}/stdout.log\n"
        f"error = {workdir}/stderr.log\n"
        f"log = {workdir}/.jobmill-condor.log\n"
        "should_transfer_files = NO\n"
        "request_cpus = 2\n"
        "request_memory = 512MB\n"
        "periodic_remove = (JobStatus == 2) && (time() - JobCurrentStartDate > 3600)\n"
        "accounting_group = astro\n"
        f'+JobmillJobId = "{JOB}"\n'
        '+ProjectName = "survey"\n'
        'requirements = (OpSys == "LINUX")\n'
        "queue\n"
    )


def test_executable_paths() -> None:
    absolute = submit_description(spec(argv=["/bin/sh", "-c", "exit 3"]))
    assert "executable = /bin/sh\n" in absolute
    assert "arguments = \"'-c' 'exit 3'\"\n" in absolute
    relative = submit_description(spec(argv=["./bin/run"]))
    assert f"executable = /tmp/jm/jobs/{JOB}/bin/run\n" in relative  # as a local job's cwd
    assert "arguments" not in relative
    with pytest.raises(ValueError, match="cannot be run"):
        submit_description(spec(argv=["A=1"]))


def test_bad_extra_lines_are_refused() -> None:
    with pytest.raises(ValueError, match=r"resources\.extra"):
        submit_description(spec(resources=Resources(extra=["queue 10"])))


# -- the state table -------------------------------------------------------------------------


def test_the_state_table_covers_every_job_status() -> None:
    assert {code: phase for code, (phase, _) in STATES.items()} == {
        1: Phase.QUEUED,
        2: Phase.EXECUTING,
        3: Phase.ABORTED,
        4: Phase.COMPLETED,
        5: Phase.HELD,
        6: Phase.EXECUTING,
        7: Phase.SUSPENDED,
    }


@pytest.mark.parametrize(
    ("ad", "phase", "exit_code", "error"),
    [
        ({"JobStatus": 1}, Phase.QUEUED, None, None),
        ({"JobStatus": 2}, Phase.EXECUTING, None, None),
        ({"JobStatus": 6}, Phase.EXECUTING, None, None),
        ({"JobStatus": 7}, Phase.SUSPENDED, None, None),
        ({"JobStatus": 4, "ExitCode": 0, "ExitBySignal": False}, Phase.COMPLETED, 0, None),
        ({"JobStatus": 4, "ExitCode": 3, "ExitBySignal": False}, Phase.ERROR, 3, "exit code 3"),
        (
            {"JobStatus": 4, "ExitBySignal": True, "ExitSignal": 9},
            Phase.ERROR,
            137,
            "killed by signal 9",
        ),
        ({"JobStatus": 4}, Phase.ERROR, None, "completed without an exit code"),
        (
            {"JobStatus": 5, "HoldReason": "submitted on hold at user's request"},
            Phase.HELD,
            None,
            "submitted on hold at user's request",
        ),
        ({"JobStatus": 3}, Phase.ABORTED, None, "removed from HTCondor: no reason given"),
        (
            {"JobStatus": 3, "RemoveReason": "The job attribute PeriodicRemove expression 'x'"},
            Phase.ERROR,
            None,
            "removed by HTCondor: The job attribute PeriodicRemove expression 'x'",
        ),
        ({"JobStatus": 9}, Phase.UNKNOWN, None, None),
    ],
)
def test_status_from_ad(
    ad: dict[str, Any], phase: Phase, exit_code: int | None, error: str | None
) -> None:
    status = status_from_ad(ad)
    assert (status.phase, status.exit_code, status.error) == (phase, exit_code, error)


# -- the executor against a fake schedd ---------------------------------------------------------


class Ad(dict[str, Any]):
    def printOld(self) -> str:  # the bindings' name
        return "".join(f"{k} = {v!r}\n" for k, v in self.items())


class FakeResult:
    def __init__(self, cluster: int, count: int) -> None:
        self._cluster, self._count = cluster, count

    def cluster(self) -> int:
        return self._cluster

    def first_proc(self) -> int:
        return 0


class FakeSchedd:
    def __init__(self) -> None:
        self.queue: list[Ad] = []
        self.history_ads: list[Ad] = []
        self.calls: list[tuple[str, Any]] = []
        self.next_cluster = 100
        self.fail: Exception | None = None
        self.act_result: Ad | None = None

    def _call(self, name: str, arg: Any) -> None:
        self.calls.append((name, arg))
        if self.fail is not None:
            raise self.fail

    def query(self, constraint: str = "true", projection: list[str] | None = None) -> list[Ad]:
        self._call("query", constraint)
        return _matching(self.queue, constraint)

    def history(
        self, constraint: str, projection: list[str], match: int = -1, since: str | None = None
    ) -> list[Ad]:
        self._call("history", constraint)
        self.since = since
        return _matching(self.history_ads, constraint)[: match if match > 0 else None]

    def submit(self, description: Any, itemdata: Any = None) -> FakeResult:
        items = list(itemdata) if itemdata is not None else None
        self._call("submit", (description.text, items))
        self.next_cluster += 1
        return FakeResult(self.next_cluster, len(items) if items else 1)

    def act(self, action: str, job_spec: Any, reason: Any = None) -> Ad | None:
        self._call("act", (action, job_spec, reason))
        return self.act_result


def _matching(ads: list[Ad], constraint: str) -> list[Ad]:
    """Enough of ClassAd matching for the constraints the executor writes."""
    if "=!= undefined" in constraint:
        return [ad for ad in ads if "JobmillJobId" in ad]
    if match := re.search(r'JobmillJobId == "([^"]+)"', constraint):
        return [ad for ad in ads if ad.get("JobmillJobId") == match.group(1)]
    if match := re.search(r"member\(ClusterId, \{([\d, ]+)\}\)", constraint):
        clusters = {int(c) for c in match.group(1).split(",")}
        return [ad for ad in ads if ad["ClusterId"] in clusters and ad["ProcId"] == 0]
    if match := re.search(r"ClusterId == (\d+) && ProcId == (\d+)", constraint):
        ids = (int(match.group(1)), int(match.group(2)))
        return [ad for ad in ads if (ad["ClusterId"], ad["ProcId"]) == ids]
    raise AssertionError(f"unexpected constraint {constraint}")


class FakeSubmit:
    def __init__(self, text: str) -> None:
        if "refuse_me" in text:
            raise ValueError("parse_up_to_q_line() failed")
        self.text = text


class FakeBindings:
    Submit = FakeSubmit

    class JobAction:
        Remove = "Remove"
        Hold = "Hold"
        Release = "Release"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSchedd:
    monkeypatch.setattr(hc, "bindings", lambda: FakeBindings)
    return FakeSchedd()


def job_ad(cluster: int, status: int, proc: int = 0, **attrs: Any) -> Ad:
    return Ad(
        ClusterId=cluster, ProcId=proc, JobStatus=status, JobmillJobId=f"job-{cluster}", **attrs
    )


def test_poll_asks_the_queue_once_and_the_history_only_for_the_missing(fake: FakeSchedd) -> None:
    fake.queue = [job_ad(1, 2), job_ad(2, 5, HoldReason="why"), job_ad(9, 1)]
    fake.history_ads = [job_ad(3, 4, ExitCode=0), job_ad(4, 4, ExitCode=2)]
    executor = HTCondorExecutor(connect=lambda: fake)
    statuses = executor.poll(["1.0", "2.0", "3.0", "4.0"])
    assert [name for name, _ in fake.calls] == ["query", "history"]
    assert fake.calls[0][1] == "JobmillJobId =!= undefined"
    assert fake.calls[1][1] == "ProcId == 0 && member(ClusterId, {3, 4})"
    assert {nid: s.phase for nid, s in statuses.items()} == {
        "1.0": Phase.EXECUTING,
        "2.0": Phase.HELD,
        "3.0": Phase.COMPLETED,
        "4.0": Phase.ERROR,
    }
    assert statuses["4.0"].exit_code == 2
    fake.calls.clear()
    executor.poll(["1.0", "2.0"])
    assert [name for name, _ in fake.calls] == ["query"]  # nothing missing: no history call


def test_a_job_in_neither_queue_nor_history_is_lost_at_the_second_poll(fake: FakeSchedd) -> None:
    executor = HTCondorExecutor(connect=lambda: fake)
    first = executor.poll(["7.0", "garbage"])
    assert first["7.0"].phase is Phase.UNKNOWN  # maybe between queue and history: wait once
    assert (first["garbage"].phase, first["garbage"].native_state) == (Phase.ERROR, "lost")
    second = executor.poll(["7.0"])["7.0"]
    assert (second.phase, second.native_state) == (Phase.ERROR, "lost")
    assert second.error and second.error.startswith("lost:")


def test_a_job_seen_again_is_not_lost(fake: FakeSchedd) -> None:
    executor = HTCondorExecutor(connect=lambda: fake)
    assert executor.poll(["7.0"])["7.0"].phase is Phase.UNKNOWN
    fake.history_ads = [job_ad(7, 4, ExitCode=3)]
    assert executor.poll(["7.0"])["7.0"].phase is Phase.ERROR
    fake.history_ads = []
    assert executor.poll(["7.0"])["7.0"].phase is Phase.UNKNOWN  # the count started again


def test_history_lookups_stop_before_jobmill_saw_the_jobs(
    fake: FakeSchedd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = HTCondorExecutor(connect=lambda: fake)
    monkeypatch.setattr(hc.time, "time", lambda: 10_000.0)
    native = executor.submit(spec(workdir=tmp_path))
    fake.queue = [job_ad(101, 2)]
    monkeypatch.setattr(hc.time, "time", lambda: 20_000.0)
    assert executor.poll([native])[native].phase is Phase.EXECUTING
    fake.queue = []
    fake.history_ads = [job_ad(101, 4, ExitCode=0)]
    assert executor.poll([native])[native].phase is Phase.COMPLETED
    assert str(fake.since) == f"EnteredCurrentStatus < {20_000 - hc.HISTORY_MARGIN}"
    assert native not in executor._seen  # ended: forgotten
    executor.poll(["55.0"])  # never seen by this process (a restart): no bound
    assert fake.since is None


def test_multi_proc_ids_are_looked_up_exactly() -> None:
    assert hc._ids_constraint([(5, 0), (5, 2), (6, 1)]) == (
        "(ClusterId == 5 && member(ProcId, {0, 2})) || (ClusterId == 6 && member(ProcId, {1}))"
    )


def test_submit_sends_exactly_the_rendered_description(fake: FakeSchedd, tmp_path: Path) -> None:
    executor = HTCondorExecutor(connect=lambda: fake)
    job = spec(workdir=tmp_path / "w")
    assert executor.submit(job) == "101.0"
    assert fake.calls == [("submit", (executor.render(job), None))]
    assert (tmp_path / "w").is_dir()


def test_what_htcondor_cannot_carry_is_rejected_before_the_schedd(
    fake: FakeSchedd, tmp_path: Path
) -> None:
    executor = HTCondorExecutor(connect=lambda: fake)
    with pytest.raises(SubmitRejected, match="DOLLAR") as caught:
        executor.submit(spec(argv=["/bin/echo", "$(DOLLAR)"], workdir=tmp_path))
    assert isinstance(caught.value, OSError) and caught.value.strerror
    with pytest.raises(SubmitRejected, match="is not an HTCondor 'command = value' line"):
        executor.submit(spec(resources=Resources(extra=["not a command"]), workdir=tmp_path))
    refused = spec(resources=Resources(extra=["refuse_me = 1"]), workdir=tmp_path)
    with pytest.raises(SubmitRejected, match="refused the submit description"):
        executor.submit(refused)
    assert fake.calls == []


def test_schedd_errors_mean_unavailable_and_reconnect(fake: FakeSchedd, tmp_path: Path) -> None:
    connects: list[int] = []

    def connect() -> FakeSchedd:
        connects.append(1)
        return fake

    executor = HTCondorExecutor(connect=connect)
    fake.fail = RuntimeError("Failed to connect to <127.0.0.1:9618>")
    for call in (
        lambda: executor.poll(["1.0"]),
        lambda: executor.submit(spec(workdir=tmp_path)),
        lambda: executor.cancel("1.0"),
        lambda: executor.find(JOB),
    ):
        with pytest.raises(ExecutorUnavailable, match="Failed to connect"):
            call()
    assert len(connects) == 4  # located again after every failure
    fake.fail = RuntimeError("Failed to create job ad, errmsg=Submit:-1:bad value")
    with pytest.raises(SubmitRejected, match="refused the job"):
        executor.submit(spec(workdir=tmp_path))


def test_connecting_fails_cleanly() -> None:
    def connect() -> None:
        raise RuntimeError("Failed communication with collector.")

    with pytest.raises(ExecutorUnavailable, match="collector"):
        HTCondorExecutor(connect=connect).poll(["1.0"])


def test_an_unknown_schedd_name_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    located: list[Any] = []

    class Bindings:
        class DaemonType:
            Schedd = "schedd"

        class Collector:
            def __init__(self, pool: str | None = None) -> None:
                self.pool = pool

            def locate(self, kind: str, name: str | None) -> Any:
                located.append((self.pool, kind, name))
                return None  # what htcondor2 answers for a name the pool does not know

        @staticmethod
        def Schedd(location: Any = None) -> Any:  # the bindings' name
            raise AssertionError("must not fall back to the local schedd")

    monkeypatch.setattr(hc, "bindings", lambda: Bindings)
    executor = HTCondorExecutor(schedd="nosuch", collector="cm:9618")
    with pytest.raises(ExecutorUnavailable, match="no schedd named 'nosuch'"):
        executor.poll(["1.0"])
    assert located == [("cm:9618", "schedd", "nosuch")]


def test_submit_many_is_one_transaction_of_items(fake: FakeSchedd, tmp_path: Path) -> None:
    executor = HTCondorExecutor(connect=lambda: fake)
    specs = [
        spec(argv=["/bin/echo", "one"], workdir=tmp_path / "a", job_id="a"),
        spec(argv=["/bin/echo", "$two"], workdir=tmp_path / "b", job_id="b"),
    ]
    assert executor.submit_many(specs) == ["101.0", "101.1"]
    [(name, (text, items))] = fake.calls
    assert name == "submit"
    assert "arguments = $(jm_arguments)\n" in text and text.endswith("queue\n")
    assert [item["jm_arguments"] for item in items] == [
        "\"'one'\"",
        "\"'$(DOLLAR)two'\"",
    ]
    assert [item["jm_jobmilljobid"] for item in items] == ['"a"', '"b"']
    different = spec(resources=Resources(memory_mb=64), workdir=tmp_path / "c", job_id="c")
    with pytest.raises(ValueError, match="batch_key"):
        executor.submit_many([*specs, different])
    assert executor.submit_many([]) == []


def test_cancel_find_and_details(fake: FakeSchedd) -> None:
    executor = HTCondorExecutor(connect=lambda: fake)
    executor.cancel("5.0")
    executor.cancel("not-an-id")
    assert fake.calls == [("act", ("Remove", ["5.0"], ("aborted through jobmill", 0)))]
    fake.history_ads = [Ad(job_ad(5, 3), JobmillJobId=JOB)]
    assert executor.find(JOB) == "5.0"
    assert executor.find("other") is None
    assert "(in the history)" in executor.details("5.0")
    assert "JobmillJobId = " in executor.details("5.0")
    fake.queue = [job_ad(6, 2)]
    assert "(in the queue)" in executor.details("6.0")
    assert "not in the queue nor in the history" in executor.details("8.0")
    assert (executor.tick(), executor.watch_fds()) == (None, {})


# -- wiring -------------------------------------------------------------------------------------


def test_settings_read_the_condor_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBMILL_CONDOR_SCHEDD", "schedd@submit.example.org")
    monkeypatch.setenv("JOBMILL_CONDOR_COLLECTOR", "cm.example.org:9618")
    settings = Settings.from_env()
    assert (settings.condor_schedd, settings.condor_collector) == (
        "schedd@submit.example.org",
        "cm.example.org:9618",
    )


def test_registry_builds_the_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    settings = Settings(executors=("local", "htcondor"), condor_schedd="s", condor_collector="c")
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return object() if name == "htcondor2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(hc.os, "geteuid", lambda: 2001)
    executors = build_executors(settings)
    condor = executors["htcondor"]
    assert isinstance(condor, HTCondorExecutor)
    assert (condor.schedd_name, condor.collector) == ("s", "c")
    monkeypatch.setattr(hc.os, "geteuid", lambda: 0)
    with pytest.raises(ValueError, match="cannot run as root"):
        build_executors(settings)


def test_registry_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "htcondor2" else real_find_spec(name, *a),
    )
    with pytest.raises(ValueError, match=r"jobmill\[htcondor\]"):
        build_executors(Settings(executors=("htcondor",)))


# -- hold, release, and a render that needs no schedd ------------------------------------------


def test_hold_asks_for_an_idle_job_with_the_reason_and_release_names_the_job(
    fake: FakeSchedd,
) -> None:
    executor = HTCondorExecutor(connect=lambda: fake)
    fake.act_result = Ad(TotalSuccess=1, TotalJobAds=1)
    executor.hold("12.0", "held through jobmill by ada")
    executor.release("12.0", "released through jobmill by ada")
    assert fake.calls == [  # the reason as (text, code): the 25.x bindings drop a plain string
        ("act", ("Hold", "ClusterId == 12 && ProcId == 0 && JobStatus == 1",
                 ("held through jobmill by ada", 0))),
        ("act", ("Release", ["12.0"], ("released through jobmill by ada", 0))),
    ]  # fmt: skip


def test_hold_of_a_job_that_is_not_idle_is_refused(fake: FakeSchedd) -> None:
    executor = HTCondorExecutor(connect=lambda: fake)
    fake.act_result = Ad(TotalSuccess=0, TotalJobAds=0)
    with pytest.raises(SubmitRejected, match="not idle"):
        executor.hold("12.0", "x")
    with pytest.raises(SubmitRejected, match="not held"):
        executor.release("12.0", "x")
    with pytest.raises(SubmitRejected, match="not an HTCondor job id"):
        executor.hold("garbage", "x")
    assert isinstance(SubmitRejected("x"), OSError)  # the service answers 409 for it


def test_hold_when_the_schedd_is_down_is_unavailable(fake: FakeSchedd) -> None:
    executor = HTCondorExecutor(connect=lambda: fake)
    fake.fail = RuntimeError("Failed to connect to schedd")
    with pytest.raises(ExecutorUnavailable, match="hold"):
        executor.hold("12.0", "x")


def test_render_needs_no_schedd() -> None:
    def unreachable() -> Any:
        raise AssertionError("render must not connect")

    executor = HTCondorExecutor(connect=unreachable)
    assert executor.render(spec()) == submit_description(spec())
