"""Provenance documents built from stored jobs (no processes run), and ActivityDescriptions."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from prov.model import (
    PROV,
    PROV_LOCATION,
    ProvActivity,
    ProvAgent,
    ProvDocument,
    ProvEntity,
    ProvGeneration,
    ProvUsage,
    ProvWarning,
)

import jobmill.service.provenance as provenance_module
from jobmill.config import Settings
from jobmill.domain.errors import Conflict, ValidationError
from jobmill.domain.jobs import Job, NewJob, utcnow
from jobmill.domain.jobtypes import JobType, Parameter, ParamType, Result
from jobmill.domain.lifecycle import Action, Phase, Reason
from jobmill.factory import open_store
from jobmill.service.descriptions import activity_description, text_value, votable_datatype
from jobmill.service.files import JobFiles
from jobmill.service.jobs import JobService, User
from jobmill.service.provenance import (
    ProvenanceService,
    Reference,
    check_depth,
    check_format,
    parse_reference,
    serialize,
)

BASE = "https://jobs.example.org"
API = f"{BASE}/api/v1"
ID = "0f301a1c-d6b4-4e1f-a5c2-92c6f4b1e8d0"
ADMIN = User("root", admin=True)

JOBTYPES = {
    "make": JobType(
        name="make",
        description="Makes text files.",
        version="3",
        command=["make-things", "{n}"],
        parameters={"n": Parameter(type=ParamType.INTEGER, default=1, unit="count")},
        results=[
            Result(name="txt", pattern="*.txt", content_type="text/plain"),
            Result(name="log", pattern="run.log"),
        ],
    ),
    "use": JobType(
        name="use",
        command=["use-things", "{src}"],
        parameters={
            "src": Parameter(type=ParamType.PATH, required=True),
            "note": Parameter(type=ParamType.STRING, deliver="env"),
        },
        results=[Result(name="out", pattern="out.dat")],
    ),
}


# -- references ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{API}/jobs/{ID}/results/echo", Reference(ID, result_id="echo")),
        (f"http://h:8080/x/api/v1/jobs/{ID}/results/a/b%20c?x=1", Reference(ID, "a/b c")),
        (f"/api/v1/jobs/{ID.replace('-', '')}/results/r", Reference(ID, result_id="r")),
        (f"{API}/jobs/{ID}/results/", None),
        (f"{API}/jobs/not-a-uuid/results/echo", None),
        (f"{API}/jobs/{ID}/logs/stdout", None),
        ("relative/file.txt", None),
        ("", None),
        (42, None),
        (None, None),
    ],
)
def test_parse_reference_of_urls(value: Any, expected: Reference | None, tmp_path: Path) -> None:
    assert parse_reference(value, tmp_path / "jobs") == expected


def test_parse_reference_of_paths(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    (root / ID / "sub").mkdir(parents=True)
    assert parse_reference(str(root / ID / "sub" / "a.txt"), root) == Reference(
        ID, relative_path="sub/a.txt"
    )
    assert parse_reference(f"{root}/{ID}/x/../b.txt", root) == Reference(ID, relative_path="b.txt")
    assert parse_reference(f"file://{root}/{ID}/a%20b.txt", root) == Reference(
        ID, relative_path="a b.txt"
    )
    assert parse_reference(str(root / ID), root) is None  # the directory, not a file in it
    assert parse_reference(str(root / "not-a-job" / "a.txt"), root) is None
    assert parse_reference(str(tmp_path / "elsewhere" / ID / "a.txt"), root) is None
    assert parse_reference(f"{root}/{ID}/../{ID}x/a.txt", root) is None


def test_format_and_depth_checks_name_the_field() -> None:
    assert check_format("JSON") == "json"
    assert check_depth(10) == 10
    with pytest.raises(ValidationError) as bad_format:
        check_format("turtle")
    assert bad_format.value.field == "format" and "provn" in bad_format.value.message
    for depth in (0, -1, 11):
        with pytest.raises(ValidationError) as bad_depth:
            check_depth(depth)
        assert bad_depth.value.field == "depth"


# -- documents from stored jobs ----------------------------------------------------------------


@pytest.fixture
def service(tmp_path: Path) -> Iterator[JobService]:
    store = open_store(Settings(home=tmp_path / "home"))
    try:
        yield JobService(store, JOBTYPES, JobFiles(tmp_path / "home"), executors=["local"])
    finally:
        store.read_engine.dispose()
        store.engine.dispose()


def stored(
    jobs: JobService,
    type_: str,
    owner: str = "alice",
    files: dict[str, str] | None = None,
    finish: bool = True,
    job_id: str | None = None,
    **parameters: Any,
) -> Job:
    job = jobs.store.create(
        [
            NewJob(
                **({"id": job_id} if job_id else {}),
                type=type_,
                owner=owner,
                parameters=parameters,
                executor="local",
                execution_duration=0,
                destruction_at=utcnow() + timedelta(days=1),
                phase=Phase.QUEUED,
                reason=Reason.CAPACITY.value,
            )
        ],
        actor=owner,
    )[0]
    workdir = jobs.files.workdir(job.id)
    workdir.mkdir(parents=True)
    for name, text in (files or {}).items():
        (workdir / name).write_text(text)
    if finish:
        jobs.store.transition(job.id, Action.START, actor="test")
        job = jobs.store.transition(job.id, Action.COMPLETE, actor="test", values={"exit_code": 0})
    return job


def document(jobs: JobService, job: Job, depth: int = 1, user: User = ADMIN) -> ProvDocument:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProvWarning)
        return ProvenanceService(jobs, BASE).document(user, job.id, depth)


def ids(doc: ProvDocument, cls: type) -> set[str]:
    return {str(r.identifier.uri) for r in doc.get_records(cls)}


def generations(doc: ProvDocument) -> set[tuple[str, str]]:
    pairs = set()
    for record in doc.get_records(ProvGeneration):
        formal = dict(record.formal_attributes)
        pairs.add((str(formal[PROV["entity"]].uri), str(formal[PROV["activity"]].uri)))
    return pairs


def test_odd_names_survive_every_format_without_warnings(service: JobService) -> None:
    job = stored(
        service,
        "make",
        owner="Jane Doe@lab",
        files={"a b.txt": "1", "ü.txt": "22", "run.log": "333"},
        n=7,
    )
    doc = document(service, job)
    assert ids(doc, ProvAgent) == {f"{API}/users/Jane%20Doe@lab"}
    results = {i for i in ids(doc, ProvEntity) if "/results/" in i}
    act = f"{API}/jobs/{job.id}"
    assert results == {
        f"{act}/results/txt/a%20b.txt",
        f"{act}/results/txt/%C3%BC.txt",
        f"{act}/results/log",
    }
    log = next(r for r in doc.get_records(ProvEntity) if str(r.identifier.uri).endswith("/log"))
    assert list(log.get_attribute(PROV_LOCATION)) == [f"{act}/results/log"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProvWarning)
        for fmt in ("json", "xml", "provn"):
            text = serialize(doc, fmt).decode()
            assert ProvDocument.deserialize(content=text, format=fmt) == doc, fmt


def test_unfinished_job_is_a_conflict(service: JobService) -> None:
    job = stored(service, "make", finish=False)
    with pytest.raises(Conflict) as refused:
        document(service, job)
    assert "QUEUED" in refused.value.message


def test_a_string_holding_a_result_path_is_an_input(service: JobService) -> None:
    made = stored(service, "make", files={"a.txt": "x"})
    path = service.files.workdir(made.id) / "a.txt"
    use = stored(service, "use", src="/data/raw.fits", note=str(path))
    doc = document(service, use, depth=2)
    assert ids(doc, ProvActivity) == {f"{API}/jobs/{made.id}", f"{API}/jobs/{use.id}"}
    used = set()
    for record in doc.get_records(ProvUsage):
        formal = dict(record.formal_attributes)
        used.add(str(formal[PROV["entity"]].uri))
    assert f"{API}/jobs/{made.id}/results/txt" in used  # the string named a.txt, result 'txt'
    assert f"{API}/jobs/{use.id}/inputs/src" in used  # a path outside jobmill
    assert (f"{API}/jobs/{made.id}/results/txt", f"{API}/jobs/{made.id}") in generations(doc)


def test_only_declared_results_are_said_to_be_generated(service: JobService) -> None:
    made = stored(service, "make")  # its files are gone
    use = stored(
        service,
        "use",
        src=f"{API}/jobs/{made.id}/results/log",
        note=f"{API}/jobs/{made.id}/results/typo",
    )
    pairs = generations(document(service, use, depth=2))
    made_act = f"{API}/jobs/{made.id}"
    assert (f"{made_act}/results/log", made_act) in pairs
    assert (f"{made_act}/results/typo", made_act) not in pairs


def test_long_chains_are_cut_and_flagged(
    service: JobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous = stored(service, "make", files={"run.log": "x"})
    chain = [previous]
    for _ in range(4):
        previous = stored(
            service, "use", files={"out.dat": "x"}, src=f"{API}/jobs/{previous.id}/results/out"
        )
        chain.append(previous)
    assert len(ids(document(service, chain[-1], depth=10), ProvActivity)) == 5
    monkeypatch.setattr(provenance_module, "MAX_JOBS", 2)
    doc = document(service, chain[-1], depth=10)
    assert len(ids(doc, ProvActivity)) == 2
    root = doc.get_record(f"jobmill:jobs/{chain[-1].id}")[0]
    assert list(root.get_attribute("jobmill:provenanceTruncated")) == [True]


def test_other_users_jobs_are_not_followed(service: JobService) -> None:
    made = stored(service, "make", owner="alice", files={"a.txt": "x"})
    use = stored(service, "use", owner="bob", src=f"{API}/jobs/{made.id}/results/txt")
    doc = document(service, use, depth=3, user=User("bob"))
    assert ids(doc, ProvActivity) == {f"{API}/jobs/{use.id}"}
    assert ids(doc, ProvAgent) == {f"{API}/users/bob"}


# -- ActivityDescription ----------------------------------------------------------------------

VOT = "{http://www.ivoa.net/xml/VOTable/v1.3}"


@pytest.mark.parametrize(
    ("kind", "datatype", "arraysize"),
    [
        (ParamType.STRING, "char", "*"),
        (ParamType.INTEGER, "long", None),
        (ParamType.NUMBER, "double", None),
        (ParamType.BOOLEAN, "boolean", None),
        (ParamType.ENUM, "char", "*"),
        (ParamType.PATH, "char", "*"),
    ],
)
def test_votable_datatypes(kind: ParamType, datatype: str, arraysize: str | None) -> None:
    assert votable_datatype(kind) == (datatype, arraysize)


def test_text_values() -> None:
    assert [text_value(v) for v in (None, True, False, 3.0, 2.5, 7, "x")] == [
        "",
        "true",
        "false",
        "3",
        "2.5",
        "7",
        "x",
    ]


def test_description_schema_valid_with_clashing_names_and_doculink() -> None:
    import astropy.io.votable as votable

    jobtype = JobType(
        name="n",
        command=["run", "{n}", "{k}"],
        parameters={
            "n": Parameter(type=ParamType.INTEGER, min=0, max=5.0, description="same as type"),
            "k": Parameter(type=ParamType.ENUM, options=[1, 2], default=2),
        },
        results=[Result(name="n", pattern="*.fits", content_type="image/fits")],
        max_execution_duration=100,
    )
    body = activity_description(jobtype, doculink="https://docs.example.org/n")
    root = etree.fromstring(body)
    xsd = Path(votable.__file__).parent / "data" / "VOTable.v1.3.xsd"
    schema = etree.XMLSchema(etree.parse(str(xsd)))
    assert schema.validate(root), schema.error_log
    resource = root.find(f"{VOT}RESOURCE")
    assert resource.find(f"{VOT}DESCRIPTION") is None  # the job type has none
    top = {p.get("name"): p.get("value") for p in resource.findall(f"{VOT}PARAM")}
    assert top["doculink"] == "https://docs.example.org/n"
    assert top["maxExecutionDuration"] == "100"
    assert "executionDuration" not in top
    inputs = resource.find(f"{VOT}GROUP[@name='InputParams']")
    n = inputs.find(f"{VOT}PARAM[@name='n']")
    assert n.find(f"{VOT}VALUES/{VOT}MAX").get("value") == "5"
    k = inputs.find(f"{VOT}PARAM[@name='k']")
    assert (k.get("datatype"), k.get("value")) == ("char", "2")
    (generated,) = resource.find(f"{VOT}GROUP[@name='Generated']")
    multiplicity = generated.find(f"{VOT}PARAM[@name='multiplicity']").get("value")
    assert multiplicity == "*"
    assert resource.find(f"{VOT}GROUP[@name='Used']").findall(f"{VOT}GROUP") == []


def test_a_job_naming_its_own_result_used_a_plain_input(service: JobService) -> None:
    job = stored(
        service, "use", files={"out.dat": "x"}, job_id=ID, src=f"{API}/jobs/{ID}/results/out"
    )
    doc = document(service, job, depth=3)
    act = f"{API}/jobs/{ID}"
    used = set()
    for record in doc.get_records(ProvUsage):
        used.add(str(dict(record.formal_attributes)[PROV["entity"]].uri))
    assert f"{act}/inputs/src" in used
    assert f"{act}/results/out" not in used
    assert generations(doc) == {(f"{act}/results/out", act)}


def test_uws_provenance_results_point_at_the_native_endpoint() -> None:
    from jobmill.service.provenance import provenance_url, uws_provenance_results

    links = uws_provenance_results(BASE + "/", ID)
    assert links == {
        "provjson": (f"{API}/jobs/{ID}/provenance?format=json", "application/json"),
        "provxml": (f"{API}/jobs/{ID}/provenance?format=xml", "application/xml"),
        "provsvg": (f"{API}/jobs/{ID}/provenance?format=svg", "image/svg+xml"),
    }
    assert provenance_url(BASE, ID, "provn", 3).endswith("?format=provn&depth=3")


def test_svg_without_graphviz_prov_dot_or_time_is_drawn_by_jobmill(
    service: JobService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A missing, failing or slow Graphviz, or no prov.dot: jobmill's own drawing, never 503;
    a large graph goes to it at once."""
    import sys

    from jobmill.service.provenance import render_svg

    doc = document(service, stored(service, "make", files={"run.log": "x"}))
    slow = tmp_path / "slow-dot"
    slow.write_text("#!/bin/sh\nexec sleep 5\n")
    slow.chmod(0o755)
    broken = tmp_path / "broken-dot"
    broken.write_text("#!/bin/sh\necho nope >&2; exit 3\n")
    broken.chmod(0o755)
    fine = tmp_path / "fine-dot"
    fine.write_text("#!/bin/sh\ncat >/dev/null; echo '<svg class=\"graphviz\"/>'\n")
    fine.chmod(0o755)

    def drawn_by_jobmill(svg: bytes) -> bool:
        root = etree.fromstring(svg)
        return [g.get("class") for g in root.iterchildren("{*}g")] == ["edges", "nodes"]

    assert render_svg(doc, dot=str(fine)).strip() == b'<svg class="graphviz"/>'
    started = time.monotonic()
    assert drawn_by_jobmill(render_svg(doc, dot=str(slow), timeout=0.3))
    assert time.monotonic() - started < 4
    for dot in ("jobmill-test-no-such-dot", str(broken)):
        assert drawn_by_jobmill(render_svg(doc, dot=dot))
    monkeypatch.setattr(provenance_module, "GRAPHVIZ_MAX_RECORDS", 3)
    assert drawn_by_jobmill(render_svg(doc, dot=str(fine)))
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "prov.dot", None)
    assert drawn_by_jobmill(render_svg(doc, dot=str(fine)))
