"""Rules, the pure part: patterns and captures, templates, cron slots, checks, rules files."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pydantic
import pytest

from jobmill.domain.errors import JobTypeFileError, ValidationError
from jobmill.domain.jobtype_files import load_jobtypes
from jobmill.domain.jobtypes import JobType
from jobmill.domain.rule_files import load_rules
from jobmill.domain.rules import (
    FilePattern,
    RuleSpec,
    Schedule,
    check,
    file_context,
    references,
    render,
    render_parameters,
    slot_key,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "jobtypes"


@pytest.fixture(scope="module")
def jobtypes() -> dict[str, JobType]:
    return load_jobtypes([EXAMPLES])


# -- patterns -------------------------------------------------------------------------------


def test_captures_become_named_values() -> None:
    pattern = FilePattern.compile("raw/{visit}/{ccd}.fits")
    assert pattern.captures == ("visit", "ccd")
    assert pattern.glob == "raw/*/*.fits"
    assert pattern.match("raw/411371/R22_S11.fits") == {"visit": "411371", "ccd": "R22_S11"}


@pytest.mark.parametrize(
    "path",
    [
        "raw/411371/R22.fit",
        "raw/411371/x/R22.fits",
        "raw//R22.fits",
        "other/1/R22.fits",
        "raw/1/.fits",
    ],
)
def test_captures_never_cross_a_slash_or_match_nothing(path: str) -> None:
    assert FilePattern.compile("raw/{visit}/{ccd}.fits").match(path) is None


def test_wildcards_and_double_star() -> None:
    pattern = FilePattern.compile("**/night-{n}/*.fi?s")
    assert pattern.glob == "**/night-*/*.fi?s"
    assert pattern.match("night-3/a.fits") == {"n": "3"}
    assert pattern.match("a/b/night-12/x.fiTs") == {"n": "12"}
    assert pattern.match("a/night-12/sub/x.fits") is None
    assert FilePattern.compile("d/[ab]{x}.txt").match("d/a1.txt") == {"x": "1"}
    assert FilePattern.compile("d/[!ab]{x}.txt").match("d/a1.txt") is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("/abs/{x}.fits", "relative"),
        ("raw/../{x}", "'..'"),
        ("raw/{x}/{x}.fits", "twice"),
        ("raw/{path}.fits", "reserved"),
        ("raw/{bad-name}.fits", "bad capture"),
        ("raw/x}.fits", "unmatched"),
        ("raw/**", "not '**'"),
        ("raw/a**/x", "whole path component"),
        ("raw/[ab.fits", "unclosed"),
    ],
)
def test_bad_patterns_say_why(text: str, why: str) -> None:
    with pytest.raises(ValueError) as caught:
        FilePattern.compile(text)
    assert why in str(caught.value)


def test_file_context_has_captures_path_and_file() -> None:
    pattern = FilePattern.compile("raw/{visit}/{ccd}.fits")
    context = file_context(pattern, "/data/", "raw/7/R1.fits")
    assert context == {
        "visit": "7",
        "ccd": "R1",
        "path": "/data/raw/7/R1.fits",
        "file": "raw/7/R1.fits",
    }
    assert file_context(pattern, "/data", "raw/7/R1.txt") is None


# -- templates ------------------------------------------------------------------------------


def test_a_whole_template_keeps_the_type_and_text_is_text() -> None:
    context = {"parameters.visit": 411371, "flag": True, "name": "R22"}
    assert render("{parameters.visit}", context, field="f") == 411371
    assert render("v{parameters.visit}-{name}", context, field="f") == "v411371-R22"
    assert render("{flag}!", context, field="f") == "true!"
    assert render("{{literal}} {name}", context, field="f") == "{literal} R22"
    assert render(3, context, field="f") == 3


def test_a_missing_value_names_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        render("{results.calexp}", {"results.other": "x"}, field="parameters.calexp")
    assert caught.value.field == "parameters.calexp"
    assert "{results.calexp}" in caught.value.message


@pytest.mark.parametrize("bad", ["{", "a}b", "{not a name}", "{x"])
def test_malformed_templates_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        references(bad)


def test_render_parameters_renders_each() -> None:
    spec = RuleSpec(
        name="r", create="echo", schedule="0 * * * *", parameters={"message": "at {slot}"}
    )
    assert render_parameters(spec, {"slot": "S"}) == {"message": "at S"}


# -- cron -----------------------------------------------------------------------------------


def test_latest_slot_is_at_or_before_now() -> None:
    every15 = Schedule("*/15 * * * *")
    assert every15.latest(datetime(2026, 11, 22, 1, 7, 30, tzinfo=UTC)) == datetime(
        2026, 11, 22, 1, 0, tzinfo=UTC
    )
    assert every15.latest(datetime(2026, 11, 22, 1, 15, 0, tzinfo=UTC)) == datetime(
        2026, 11, 22, 1, 15, tzinfo=UTC
    )
    assert every15.next(datetime(2026, 11, 22, 1, 15, 0, tzinfo=UTC)) == datetime(
        2026, 11, 22, 1, 30, tzinfo=UTC
    )


def test_slots_are_utc_and_keys_sort_as_times() -> None:
    daily = Schedule("0 6 * * *")
    from datetime import timedelta, timezone

    paris = timezone(timedelta(hours=1))
    slot = daily.latest(datetime(2026, 11, 22, 8, 0, tzinfo=paris))  # 07:00 UTC
    assert slot_key(slot) == "2026-11-22T06:00:00Z"
    assert slot_key(datetime(2026, 11, 22, 6, tzinfo=UTC)) < slot_key(
        datetime(2026, 11, 22, 12, tzinfo=UTC)
    )


@pytest.mark.parametrize("bad", ["* * * *", "61 * * * *", "* * * * * *", "@daily", "a b c d e"])
def test_bad_cron_expressions_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        Schedule(bad)


# -- the spec and its check against job types -----------------------------------------------


def _spec_error(data: dict[str, object]) -> str:
    with pytest.raises(pydantic.ValidationError) as caught:
        RuleSpec.model_validate(data)
    return str(caught.value)


def test_exactly_one_kind() -> None:
    assert "exactly one" in _spec_error({"name": "r", "create": "echo"})
    assert "exactly one" in _spec_error(
        {"name": "r", "create": "echo", "file": "a/{x}", "schedule": "* * * * *"}
    )


def test_kind_specific_fields_are_refused_elsewhere() -> None:
    assert "only for a 'file' rule" in _spec_error(
        {"name": "r", "create": "echo", "job": "sleep", "root": "/data"}
    )
    assert "only for a 'job' rule" in _spec_error(
        {"name": "r", "create": "echo", "schedule": "* * * * *", "phase": "ERROR"}
    )
    assert "must be one of" in _spec_error(
        {"name": "r", "create": "echo", "job": "sleep", "phase": "EXECUTING"}
    )


def test_job_rule_phase_defaults_to_completed() -> None:
    spec = RuleSpec(name="r", create="echo", job="sleep", parameters={"message": "x"})
    assert spec.kind == "job" and spec.phase == "COMPLETED"


def _check_error(jobtypes: dict[str, JobType], **data: object) -> ValidationError:
    spec = RuleSpec.model_validate({"name": "r", "create": "echo", **data})
    with pytest.raises(ValidationError) as caught:
        check(spec, jobtypes)
    return caught.value


def test_check_names_the_field(jobtypes: dict[str, JobType]) -> None:
    assert _check_error(jobtypes, create="nope", schedule="* * * * *").field == "create"
    assert _check_error(jobtypes, job="nope", parameters={"message": "x"}).field == "job"
    error = _check_error(jobtypes, file="raw/{visit}.fits", parameters={"message": "{ccd}"})
    assert error.field == "parameters.message" and "{ccd}" in error.message
    error = _check_error(jobtypes, job="sleep", parameters={"message": "{results.nope}"})
    assert error.field == "parameters.message" and "sleep" in error.message
    error = _check_error(jobtypes, job="sleep", parameters={"message": "{parameters.nope}"})
    assert error.field == "parameters.message"
    assert _check_error(jobtypes, schedule="* * * * *").field == "parameters.message"
    error = _check_error(jobtypes, schedule="* * * * *", parameters={"message": "x", "nope": 1})
    assert error.field == "parameters.nope"
    error = _check_error(jobtypes, schedule="* * * * *", parameters={"message": "x"}, run_id="{x}")
    assert error.field == "run_id"


def test_constants_are_checked_against_the_parameter(jobtypes: dict[str, JobType]) -> None:
    spec = RuleSpec(name="r", create="sleep", schedule="* * * * *", parameters={"seconds": "soon"})
    with pytest.raises(ValidationError) as caught:
        check(spec, jobtypes)
    assert caught.value.field == "parameters.seconds"


def test_good_rules_pass(jobtypes: dict[str, JobType]) -> None:
    for data in (
        {"file": "raw/{visit}/{ccd}.fits", "parameters": {"message": "{visit} {ccd} {path}"}},
        {"job": "sleep", "parameters": {"message": "{results.sleep} {report.x} {job.id}"}},
        {"schedule": "0 6 * * *", "parameters": {"message": "{date}"}},
    ):
        check(RuleSpec.model_validate({"name": "r", "create": "echo", **data}), jobtypes)


# -- rules files ----------------------------------------------------------------------------


def test_the_example_rules_load(jobtypes: dict[str, JobType]) -> None:
    rules = load_rules([EXAMPLES], jobtypes)
    assert {spec.kind for spec, _ in rules.values()} == {"file", "job", "schedule"}
    assert all(origin.startswith(str(EXAMPLES)) for _, origin in rules.values())


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.rules.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("rules:\n  - name: a\n    create: echo\n    schedule: '61 * * * *'\n", 4, "schedule"),
        (
            "rules:\n  - name: a\n    create: echo\n    job: sleep\n    parameters:\n"
            "      message: '{results.nope}'\n",
            6,
            "no results 'nope'",
        ),
        ("rules:\n  - name: a\n    create: nope\n    schedule: '* * * * *'\n", 3, "unknown job"),
        ("rules:\n  - name: a\n    create: echo\n    colour: red\n", 4, "colour"),
        ("rules: [\n", 2, "invalid YAML"),
        ("name: a\n", 1, "rules:"),
    ],
)
def test_a_bad_rules_file_names_file_and_line(
    tmp_path: Path, jobtypes: dict[str, JobType], text: str, line: int, words: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(JobTypeFileError) as caught:
        load_rules([tmp_path], jobtypes)
    assert caught.value.path == str(path)
    assert caught.value.line == line, str(caught.value)
    assert words in str(caught.value)


def test_a_rule_name_twice_is_an_error(tmp_path: Path, jobtypes: dict[str, JobType]) -> None:
    rule = (
        "  - name: a\n    create: echo\n    schedule: '* * * * *'\n    parameters: {message: x}\n"
    )
    (tmp_path / "one.rules.yaml").write_text("rules:\n" + rule)
    (tmp_path / "two.rules.yml").write_text("rules:\n" + rule)
    with pytest.raises(JobTypeFileError, match="already defined"):
        load_rules([tmp_path], jobtypes)


def test_rules_files_are_not_job_types(tmp_path: Path) -> None:
    (tmp_path / "x.rules.yaml").write_text("rules: []\n")
    assert load_jobtypes([tmp_path]) == {}
