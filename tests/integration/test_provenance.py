"""Provenance of real jobs (PROV-JSON, -XML, PROV-N, SVG); job type descriptions (VOTable)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from lxml import etree
from prov.model import (
    PROV_LABEL,
    PROV_LOCATION,
    PROV_ROLE,
    PROV_TYPE,
    PROV_VALUE,
    ProvActivity,
    ProvAgent,
    ProvAssociation,
    ProvDocument,
    ProvEntity,
    ProvGeneration,
    ProvUsage,
)

import jobmill.service.provenance as provenance_module
from jobmill.config import Settings
from jobmill.domain.lifecycle import Action
from jobmill.factory import Jobmill
from jobmill.service.jobs import User
from tests.conftest import require_service, wait_phase

pytestmark = pytest.mark.filterwarnings("error::prov.model.ProvWarning")

VOT = "{http://www.ivoa.net/xml/VOTable/v1.3}"

CONSUME_YAML = """\
name: consume
description: Read a file (or take the text given) and write it in capitals to out.txt.
version: "2.1"
command: ["python3", "{jobtype_dir}/consume.py", "{source}", "{suffix}"]
parameters:
  source:
    type: path
    required: true
    description: The file to read.
  suffix:
    type: string
    default: "!"
    description: Appended to the text.
  level:
    type: enum
    options: [low, high]
    default: low
    deliver: env
  scale:
    type: number
    min: 0.5
    max: 4
    unit: m
    deliver: env
  strict:
    type: boolean
    default: false
    deliver: env
results:
  - name: out
    pattern: out.txt
    content_type: text/plain
"""

CONSUME_PY = """\
import sys
source, suffix = sys.argv[1], sys.argv[2]
try:
    with open(source, encoding="utf-8") as handle:
        text = handle.read().strip()
except OSError:
    text = source
with open("out.txt", "w", encoding="utf-8") as handle:
    handle.write(text.upper() + suffix + "\\n")
"""


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The example job types plus ``consume``, which reads another job's result."""
    types = tmp_path / "types"
    types.mkdir()
    (types / "consume.yaml").write_text(CONSUME_YAML)
    (types / "consume.py").write_text(CONSUME_PY)
    return settings.with_(jobtypes=(*settings.jobtypes, str(types)))


# -- helpers ---------------------------------------------------------------------------------


def run(
    client: TestClient, type_: str, headers: dict[str, str] | None = None, **params: Any
) -> str:
    response = client.post(
        "/api/v1/jobs", json={"type": type_, "parameters": params}, headers=headers or {}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def finished(client: TestClient, job_id: str) -> dict:  # type: ignore[type-arg]
    """Wait for the job to end (the loopback test user is an admin and sees every job)."""
    return wait_phase(client, job_id)


def prov(
    client: TestClient, job_id: str, fmt: str = "json", depth: int = 1, **kw: Any
) -> ProvDocument:
    response = client.get(
        f"/api/v1/jobs/{job_id}/provenance", params={"format": fmt, "depth": depth}, **kw
    )
    assert response.status_code == 200, response.text
    return ProvDocument.deserialize(content=response.text, format=fmt)


def records(doc: ProvDocument, cls: type) -> list[Any]:
    return list(doc.get_records(cls))


def ident(record: Any) -> str:
    return str(record.identifier.uri)


def first(record: Any, attr: str) -> Any:
    values = list(record.get_attribute(attr))
    assert values, f"{record} has no {attr}"
    return values[0]


def activities(doc: ProvDocument) -> set[str]:
    return {ident(a).rsplit("/", 1)[1] for a in records(doc, ProvActivity)}


def used_pairs(doc: ProvDocument) -> set[tuple[str, str, str]]:
    """(activity URI, entity URI, role) of every usage."""
    pairs = set()
    for usage in records(doc, ProvUsage):
        formal = dict(usage.formal_attributes)
        role = list(usage.get_attribute(PROV_ROLE))
        pairs.add(
            (
                str(formal[provenance_key("activity")].uri),
                str(formal[provenance_key("entity")].uri),
                str(role[0]) if role else "",
            )
        )
    return pairs


def generated_pairs(doc: ProvDocument) -> set[tuple[str, str]]:
    """(entity URI, activity URI) of every generation."""
    pairs = set()
    for generation in records(doc, ProvGeneration):
        formal = dict(generation.formal_attributes)
        pairs.add(
            (str(formal[provenance_key("entity")].uri), str(formal[provenance_key("activity")].uri))
        )
    return pairs


def provenance_key(name: str) -> Any:
    from prov.model import PROV

    return PROV[name]


API = "http://testserver/api/v1"


# -- one job ---------------------------------------------------------------------------------


def test_completed_job_provenance_links_activity_owner_parameters_and_results(
    client: TestClient,
) -> None:
    job_id = run(client, "echo", message="hello")
    assert finished(client, job_id)["phase"] == "COMPLETED"
    response = client.get(f"/api/v1/jobs/{job_id}/provenance")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    doc = ProvDocument.deserialize(content=response.text, format="json")

    assert {ns.prefix: ns.uri for ns in doc.namespaces}["jobmill"] == f"{API}/"
    (activity,) = records(doc, ProvActivity)
    act = f"{API}/jobs/{job_id}"
    assert ident(activity) == act
    assert first(activity, "jobmill:phase") == "COMPLETED"
    assert first(activity, "jobmill:exitCode") == 0
    assert first(activity, "jobmill:jobType") == "echo"
    assert first(activity, "jobmill:jobTypeVersion") == "1.0"
    assert first(activity, "prov:startTime") <= first(activity, "prov:endTime")

    (agent,) = records(doc, ProvAgent)
    assert ident(agent) == f"{API}/users/tester"
    (association,) = records(doc, ProvAssociation)
    formal = {str(k): v for k, v in association.formal_attributes}
    assert str(formal["prov:activity"].uri) == act
    assert str(formal["prov:agent"].uri) == f"{API}/users/tester"
    assert str(formal["prov:plan"].uri) == f"{API}/jobtypes/echo"
    plan = doc.get_record(formal["prov:plan"])[0]
    assert {str(t) for t in plan.get_attribute(PROV_TYPE)} == {
        "prov:Plan",
        "voprov:ActivityDescription",
    }
    assert first(plan, PROV_LOCATION) == f"{API}/jobtypes/echo/description"

    entities = {ident(e): e for e in records(doc, ProvEntity)}
    parameter = entities[f"{act}/parameters/message"]
    assert first(parameter, PROV_VALUE) == "hello"
    assert str(first(parameter, PROV_TYPE)) == "voprov:Parameter"
    assert (act, f"{act}/parameters/message", "message") in used_pairs(doc)

    result = entities[f"{act}/results/echo"]
    assert first(result, "jobmill:size") == len("hello\n")
    assert first(result, "voprov:content_type") == "text/plain"
    assert first(result, PROV_LOCATION) == f"{API}/jobs/{job_id}/results/echo"
    assert generated_pairs(doc) == {(f"{act}/results/echo", act)}
    # The result URL in the document is the native download URL.
    assert client.get(f"/api/v1/jobs/{job_id}/results/echo").text == "hello\n"


def test_xml_and_provn_carry_the_same_document_as_json(client: TestClient) -> None:
    job_id = run(client, "sleep", seconds=0, code=0)
    finished(client, job_id)
    as_json = prov(client, job_id, "json")
    xml = client.get(f"/api/v1/jobs/{job_id}/provenance", params={"format": "xml"})
    assert xml.status_code == 200
    assert xml.headers["content-type"].startswith("application/xml")
    etree.fromstring(xml.content)  # well-formed
    as_xml = ProvDocument.deserialize(content=xml.text, format="xml")
    provn = client.get(f"/api/v1/jobs/{job_id}/provenance", params={"format": "provn"})
    assert provn.status_code == 200
    assert provn.headers["content-type"].startswith("text/provenance-notation")
    assert provn.text.startswith("document")
    assert f"activity(jobmill:jobs/{job_id}" in provn.text
    assert "wasAssociatedWith(" in provn.text and "wasGeneratedBy(" in provn.text
    as_provn = ProvDocument.deserialize(content=provn.text, format="provn")
    assert as_json == as_xml == as_provn
    assert len(records(as_json, ProvUsage)) == 2  # seconds and code


def test_failed_and_aborted_jobs_have_provenance(client: TestClient) -> None:
    failed = run(client, "fail", code=5)
    assert finished(client, failed)["phase"] == "ERROR"
    doc = prov(client, failed)
    (activity,) = records(doc, ProvActivity)
    assert first(activity, "jobmill:phase") == "ERROR"
    assert first(activity, "jobmill:exitCode") == 5
    assert "exit code 5" in first(activity, "jobmill:errorSummary")
    assert records(doc, ProvGeneration) == []

    aborted = run(client, "sleep", seconds=60)
    wait_phase(client, aborted, "EXECUTING")
    assert client.post(f"/api/v1/jobs/{aborted}/abort").json()["phase"] == "ABORTED"
    (activity,) = records(prov(client, aborted), ProvActivity)
    assert first(activity, "jobmill:phase") == "ABORTED"


def test_unfinished_job_is_409(client: TestClient) -> None:
    response = client.post(
        "/api/v1/jobs", json={"type": "sleep", "parameters": {"seconds": 0}, "phase": "PENDING"}
    )
    job_id = response.json()["id"]
    answer = client.get(f"/api/v1/jobs/{job_id}/provenance")
    assert answer.status_code == 409
    error = answer.json()["error"]
    assert error["code"] == "conflict"
    assert "PENDING" in error["message"] and "finished" in error["message"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"format": "rdf"}, "format"),
        ({"format": ""}, "format"),
        ({"depth": 0}, "depth"),
        ({"depth": 11}, "depth"),
        ({"depth": "deep"}, "depth"),
    ],
)
def test_bad_format_or_depth_is_422_naming_the_field(
    client: TestClient, params: dict[str, Any], field: str
) -> None:
    job_id = run(client, "echo", message="x")
    finished(client, job_id)
    answer = client.get(f"/api/v1/jobs/{job_id}/provenance", params=params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field


def test_unknown_job_is_404(client: TestClient) -> None:
    answer = client.get("/api/v1/jobs/00000000-0000-4000-8000-000000000000/provenance")
    assert answer.status_code == 404
    assert client.get("/api/v1/jobs/not-a-uuid/provenance").status_code == 404


# -- chains ----------------------------------------------------------------------------------


def chain(client: TestClient, jobmill: Jobmill) -> tuple[str, str, str]:
    """echo A; consume B reads A's result *file*; consume C names B's result by *URL*."""
    a = run(client, "echo", message="hello")
    assert finished(client, a)["phase"] == "COMPLETED"
    a_file = jobmill.jobs.files.workdir(a) / "echo.txt"
    b = run(client, "consume", source=str(a_file))
    assert finished(client, b)["phase"] == "COMPLETED"
    assert (jobmill.jobs.files.workdir(b) / "out.txt").read_text() == "HELLO!\n"
    c = run(client, "consume", source=f"{API}/jobs/{b}/results/out", suffix="?")
    assert finished(client, c)["phase"] == "COMPLETED"
    return a, b, c


def test_depth_follows_used_results_to_the_jobs_that_made_them(
    client: TestClient, jobmill: Jobmill
) -> None:
    a, b, c = chain(client, jobmill)
    b_out = f"{API}/jobs/{b}/results/out"
    a_echo = f"{API}/jobs/{a}/results/echo"

    one = prov(client, c, depth=1)
    assert activities(one) == {c}
    assert (f"{API}/jobs/{c}", b_out, "source") in used_pairs(one)
    assert (b_out, f"{API}/jobs/{b}") not in generated_pairs(one)
    # A data-naming parameter is the data entity, not also a voprov:Parameter.
    assert f"{API}/jobs/{c}/parameters/source" not in {ident(e) for e in records(one, ProvEntity)}
    assert f"{API}/jobs/{c}/parameters/suffix" in {ident(e) for e in records(one, ProvEntity)}

    two = prov(client, c, depth=2)
    assert activities(two) == {c, b}
    assert (b_out, f"{API}/jobs/{b}") in generated_pairs(two)
    # B named A's result by its path: it is still A's result entity, used by B.
    assert (f"{API}/jobs/{b}", a_echo, "source") in used_pairs(two)
    assert (a_echo, f"{API}/jobs/{a}") not in generated_pairs(two)
    entities = {ident(e): e for e in records(two, ProvEntity)}
    assert first(entities[b_out], "jobmill:size") == len("HELLO!\n")

    three = prov(client, c, depth=3)
    assert activities(three) == {c, b, a}
    assert (a_echo, f"{API}/jobs/{a}") in generated_pairs(three)
    assert {ident(a) for a in records(three, ProvAgent)} == {f"{API}/users/tester"}
    plans = {str(r.identifier.uri) for r in records(three, ProvEntity) if "jobtypes/" in ident(r)}
    assert plans == {f"{API}/jobtypes/echo", f"{API}/jobtypes/consume"}
    assert prov(client, c, depth=10) == three

    xml = prov(client, c, "xml", depth=3)
    provn = prov(client, c, "provn", depth=3)
    assert three == xml == provn


def test_archived_upstream_still_generated_what_was_used(
    client: TestClient, jobmill: Jobmill
) -> None:
    a = run(client, "echo", message="hello")
    finished(client, a)
    b = run(client, "consume", source=str(jobmill.jobs.files.workdir(a) / "echo.txt"))
    finished(client, b)
    upstream = jobmill.store.transition(a, Action.ARCHIVE, actor="test")
    jobmill.jobs.files.remove(upstream)  # archiving removes the results, keeps the metadata

    archived = prov(client, a)
    (activity,) = records(archived, ProvActivity)
    assert first(activity, "jobmill:phase") == "ARCHIVED"
    assert records(archived, ProvGeneration) == []

    doc = prov(client, b, depth=2)
    assert activities(doc) == {a, b}
    a_echo = f"{API}/jobs/{a}/results/echo"
    assert (f"{API}/jobs/{b}", a_echo, "source") in used_pairs(doc)
    assert (a_echo, f"{API}/jobs/{a}") in generated_pairs(doc)


def test_a_reference_loop_ends(client: TestClient, jobmill: Jobmill) -> None:
    x = client.post(
        "/api/v1/jobs",
        json={"type": "consume", "parameters": {"source": "/nonexistent"}, "phase": "PENDING"},
    ).json()["id"]
    y = run(client, "consume", source=f"{API}/jobs/{x}/results/out")
    finished(client, y)
    jobmill.jobs.update_parameters(
        User("tester", admin=True), x, {"source": f"{API}/jobs/{y}/results/out"}
    )
    assert client.post(f"/api/v1/jobs/{x}/run").status_code == 200
    finished(client, x)
    doc = prov(client, x, depth=10)
    assert activities(doc) == {x, y}
    assert (f"{API}/jobs/{x}/results/out", f"{API}/jobs/{x}") in generated_pairs(doc)
    assert (f"{API}/jobs/{y}/results/out", f"{API}/jobs/{y}") in generated_pairs(doc)


# -- users -----------------------------------------------------------------------------------


@pytest.fixture
def tokens(jobmill: Jobmill) -> dict[str, dict[str, str]]:
    jobmill.store.tokens.add("alice", "alice-secret-token", admin=False)
    jobmill.store.tokens.add("bob", "bob-secret-token", admin=False)
    return {
        "alice": {"Authorization": "Bearer alice-secret-token"},
        "bob": {"Authorization": "Bearer bob-secret-token"},
    }


def test_users_see_only_their_own_provenance(
    client: TestClient, jobmill: Jobmill, tokens: dict[str, dict[str, str]]
) -> None:
    alice = run(client, "echo", tokens["alice"], message="secret")
    finished(client, alice)
    assert client.get(f"/api/v1/jobs/{alice}/provenance", headers=tokens["bob"]).status_code == 404
    doc = prov(client, alice, headers=tokens["alice"])
    assert {ident(a) for a in records(doc, ProvAgent)} == {f"{API}/users/alice"}

    # Bob's job reads Alice's file: his provenance names the file but never opens her job.
    alice_file = jobmill.jobs.files.workdir(alice) / "echo.txt"
    bob = run(client, "consume", tokens["bob"], source=str(alice_file))
    finished(client, bob)
    bobs = prov(client, bob, depth=5, headers=tokens["bob"])
    assert activities(bobs) == {bob}
    assert not any(alice in ident(e) for e in records(bobs, ProvEntity))
    (source,) = [e for e in records(bobs, ProvEntity) if ident(e).endswith("/inputs/source")]
    assert first(source, PROV_LOCATION) == str(alice_file)
    assert first(source, PROV_LABEL) == "echo.txt"
    # The admin (the loopback user) follows it.
    assert activities(prov(client, bob, depth=2)) == {bob, alice}


# -- SVG -------------------------------------------------------------------------------------


@pytest.mark.parametrize("graphviz", [True, False], ids=["graphviz", "builtin"])
def test_svg_graph(
    client: TestClient, jobmill: Jobmill, monkeypatch: pytest.MonkeyPatch, graphviz: bool
) -> None:
    """With Graphviz (where installed) or without it (jobmill's own drawing), the SVG is a
    graph whose activities link to their jobs."""
    if graphviz:
        require_service(shutil.which("dot") is not None, "Graphviz dot")
    else:
        monkeypatch.setattr(provenance_module, "DOT", "jobmill-test-no-such-dot")
    a, b, c = chain(client, jobmill)
    response = client.get(f"/api/v1/jobs/{c}/provenance", params={"format": "svg", "depth": 3})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.content.startswith(b"<?xml")
    svg = etree.fromstring(response.content)
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    text = response.text
    for job_id in (a, b, c):
        assert f"{API}/jobs/{job_id}" in text  # each activity links to its job
    if not graphviz:
        activities = svg.findall(".//{*}g[@class='activity']")
        assert len(activities) == 3
        assert client.get(f"/api/v1/jobs/{c}/provenance").status_code == 200


# -- ActivityDescription ---------------------------------------------------------------------


def description(client: TestClient, name: str) -> bytes:
    response = client.get(f"/api/v1/jobtypes/{name}/description")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-votable+xml"
    return response.content


def params_of(group: Any) -> dict[str, Any]:
    return {p.get("name"): p for p in group.findall(f"{VOT}PARAM")}


def test_jobtype_description_is_a_votable_activity_description(client: TestClient) -> None:
    body = description(client, "consume")
    root = etree.fromstring(body)
    assert root.tag == f"{VOT}VOTABLE"
    (resource,) = root.findall(f"{VOT}RESOURCE")
    assert resource.get("type") == "meta"
    assert resource.get("utype") == "voprov:ActivityDescription"
    assert resource.get("name") == "consume"
    assert "capitals" in resource.findtext(f"{VOT}DESCRIPTION")
    top = params_of(resource)
    assert top["version"].get("value") == "2.1"
    assert top["name"].get("value") == "consume"
    groups = {g.get("name"): g for g in resource.findall(f"{VOT}GROUP")}
    assert set(groups) == {"InputParams", "Used", "Generated"}

    inputs = params_of(groups["InputParams"])
    assert list(inputs) == ["source", "suffix", "level", "scale", "strict"]
    source = inputs["source"]
    assert (source.get("datatype"), source.get("arraysize")) == ("char", "*")
    assert source.get("type") is None  # required
    assert source.findtext(f"{VOT}DESCRIPTION") == "The file to read."
    suffix = inputs["suffix"]
    assert (suffix.get("value"), suffix.get("type")) == ("!", "no_query")
    level = inputs["level"]
    assert level.get("datatype") == "char"
    assert [o.get("value") for o in level.iter(f"{VOT}OPTION")] == ["low", "high"]
    scale = inputs["scale"]
    assert (scale.get("datatype"), scale.get("unit"), scale.get("value")) == ("double", "m", "")
    assert scale.find(f"{VOT}VALUES/{VOT}MIN").get("value") == "0.5"
    assert scale.find(f"{VOT}VALUES/{VOT}MAX").get("value") == "4"
    assert (inputs["strict"].get("datatype"), inputs["strict"].get("value")) == (
        "boolean",
        "false",
    )

    (used,) = groups["Used"].findall(f"{VOT}GROUP")
    assert (used.get("name"), used.get("utype")) == ("source", "voprov:UsedDescription")
    (out,) = groups["Generated"].findall(f"{VOT}GROUP")
    assert out.get("name") == "out"
    generated = params_of(out)
    assert generated["content_type"].get("value") == "text/plain"
    assert generated["default"].get("value") == "out.txt"


def test_description_types_and_limits_of_the_examples(client: TestClient) -> None:
    resource = etree.fromstring(description(client, "sleep")).find(f"{VOT}RESOURCE")
    inputs = params_of(resource.find(f"{VOT}GROUP[@name='InputParams']"))
    seconds, code = inputs["seconds"], inputs["code"]
    assert (seconds.get("datatype"), seconds.get("value"), seconds.get("unit")) == (
        "double",
        "30",
        "s",
    )
    assert seconds.find(f"{VOT}VALUES/{VOT}MAX").get("value") == "86400"
    assert (code.get("datatype"), code.get("value")) == ("long", "0")
    echo = etree.fromstring(description(client, "echo")).find(f"{VOT}RESOURCE")
    message = params_of(echo.find(f"{VOT}GROUP[@name='InputParams']"))["message"]
    assert (message.get("datatype"), message.get("arraysize"), message.get("value")) == (
        "char",
        "*",
        "",
    )
    assert client.get("/api/v1/jobtypes/nosuch/description").status_code == 404


@pytest.mark.parametrize("name", ["echo", "sleep", "fail", "counters", "ap", "consume"])
def test_description_passes_the_votable_schema_and_astropy(client: TestClient, name: str) -> None:
    body = description(client, name)
    votable = pytest.importorskip("astropy.io.votable")
    import astropy.io.votable as votable_package

    xsd = Path(votable_package.__file__).parent / "data" / "VOTable.v1.3.xsd"
    schema = etree.XMLSchema(etree.parse(str(xsd)))
    document = etree.fromstring(body)
    assert schema.validate(document), schema.error_log
    parsed = votable.parse(io.BytesIO(body), verify="exception")
    (resource,) = parsed.resources
    assert (resource.type, resource.utype) == ("meta", "voprov:ActivityDescription")
    assert {g.name for g in resource.groups} == {"InputParams", "Used", "Generated"}
