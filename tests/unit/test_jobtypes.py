"""Job types: parameter coercion and validation, argv and environment building."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest

from jobmill.domain.errors import ValidationError
from jobmill.domain.jobtype_files import load_file
from jobmill.domain.jobtypes import (
    JobType,
    Parameter,
    ParamType,
    build_argv,
    build_env,
    coerce,
    placeholders,
    render_value,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "jobtypes"
BUILTINS = {"job_id": "J-1", "job_dir": "/jobs/J-1", "jobtype_dir": "/types"}


def param(**spec: Any) -> Parameter:
    return Parameter.model_validate({"name": "x"} | spec)


def ok(spec: dict[str, Any], raw: Any) -> Any:
    return coerce(param(**spec), raw, field="parameters.x")


def refused(spec: dict[str, Any], raw: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        coerce(param(**spec), raw, field="parameters.x")
    assert info.value.field == "parameters.x"
    assert info.value.message.startswith("parameters.x: ")
    return info.value


def jobtype(parameters: dict[str, Any], command: list[str] | None = None, **more: Any) -> JobType:
    if command is None:
        command = ["prog"] + [
            f"{{{name}}}"
            for name, spec in parameters.items()
            if spec.get("deliver", "argv") in ("argv", "both")
        ]
    return JobType.model_validate(
        {"name": "t", "command": command, "parameters": parameters} | more
    )


# -- coercion, type by type ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("hello", "hello"), ("", ""), (5, "5"), (1.5, "1.5"), ("a b; $(x)", "a b; $(x)")],
)
def test_string_accepts_text_and_numbers(raw: Any, expected: str) -> None:
    value = ok({"type": "string"}, raw)
    assert value == expected and isinstance(value, str)


@pytest.mark.parametrize("raw", [True, False, None, [1], {"a": 1}, b"bytes"])
def test_string_refuses_other_json_types(raw: Any) -> None:
    assert "expected a string" in refused({"type": "string"}, raw).message


def test_string_refuses_nul_and_overlong_values() -> None:
    assert "NUL" in refused({"type": "string"}, "a\x00b").message
    assert "longer than 65536" in refused({"type": "string"}, "x" * 65537).message
    assert ok({"type": "string"}, "x" * 65536) == "x" * 65536


@pytest.mark.parametrize(
    ("raw", "expected"), [(3, 3), ("42", 42), (" -7 ", -7), ("+8", 8), (3.0, 3), (0, 0)]
)
def test_integer_accepts_whole_numbers(raw: Any, expected: int) -> None:
    value = ok({"type": "integer"}, raw)
    assert value == expected and type(value) is int


@pytest.mark.parametrize(
    "raw", [True, False, "true", 3.5, "3.5", "3.0", "abc", "", "1e3", "0x10", None, [3], {}]
)
def test_integer_refuses_mistyped_values(raw: Any) -> None:
    assert "expected an integer" in refused({"type": "integer"}, raw).message


def test_bools_are_not_integers_or_numbers() -> None:
    for kind in ("integer", "number"):
        for raw in (True, False):
            refused({"type": kind}, raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(2, 2), (2.5, 2.5), ("2", 2), ("2.5", 2.5), ("1e3", 1000.0), ("-0.5", -0.5), (".5", 0.5)],
)
def test_number_accepts_ints_and_floats(raw: Any, expected: float) -> None:
    value = ok({"type": "number"}, raw)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "raw", ["abc", "", "nan", "inf", "1e400", float("nan"), float("inf"), None, [1], "0x10"]
)
def test_number_refuses_mistyped_and_non_finite_values(raw: Any) -> None:
    refused({"type": "number"}, raw)


@pytest.mark.parametrize(
    ("kind", "raw"), [("number", "1_000"), ("number", "\u0663"), ("integer", "\u0663")]
)
def test_numbers_accept_only_ascii_decimal_notation(kind: str, raw: str) -> None:
    refused({"type": kind}, raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("off", False),
        ("0", False),
    ],
)
def test_boolean_accepts_bools_and_words(raw: Any, expected: bool) -> None:
    assert ok({"type": "boolean"}, raw) is expected


@pytest.mark.parametrize("raw", [1, 0, 1.0, "2", "maybe", "", None, [True]])
def test_boolean_refuses_everything_else(raw: Any) -> None:
    assert "expected a boolean" in refused({"type": "boolean"}, raw).message


def test_enum_needs_options() -> None:
    with pytest.raises(pydantic.ValidationError, match="needs 'options'"):
        param(type="enum")


def test_enum_accepts_only_its_options() -> None:
    spec = {"type": "enum", "options": ["fast", "slow"]}
    assert ok(spec, "fast") == "fast"
    error = refused(spec, "medium")
    assert "not one of: fast, slow" in error.message
    refused(spec, "FAST")
    refused(spec, True)


def test_enum_options_match_by_text_and_keep_the_option_value() -> None:
    spec = {"type": "enum", "options": [1, 2, 3]}
    assert ok(spec, "2") == 2 and type(ok(spec, "2")) is int
    assert ok(spec, 3) == 3
    refused(spec, 4)


def test_options_apply_to_typed_parameters() -> None:
    spec = {"type": "integer", "options": [8, 16]}
    assert ok(spec, "16") == 16
    assert "not one of: 8, 16" in refused(spec, 12).message


def test_path_is_a_string() -> None:
    assert ok({"type": "path"}, "/data/run 1/file.fits") == "/data/run 1/file.fits"
    refused({"type": "path"}, "a\x00b")
    refused({"type": "path"}, None)
    refused({"type": "path"}, ["a"])


@pytest.mark.parametrize(
    ("spec", "raw", "why"),
    [
        ({"type": "integer", "min": 1}, 0, "below the minimum 1"),
        ({"type": "integer", "max": 10}, "11", "above the maximum 10"),
        ({"type": "number", "min": 0.5}, 0.25, "below the minimum 0.5"),
        ({"type": "number", "max": 1.5}, "1.6", "above the maximum 1.5"),
    ],
)
def test_min_and_max(spec: dict[str, Any], raw: Any, why: str) -> None:
    assert why in refused(spec, raw).message


def test_min_and_max_are_inclusive() -> None:
    spec = {"type": "number", "min": 0, "max": 1.5}
    assert ok(spec, 0) == 0
    assert ok(spec, "1.5") == 1.5


def test_parameter_declarations_are_checked() -> None:
    with pytest.raises(pydantic.ValidationError, match="'min' is larger than 'max'"):
        param(type="integer", min=5, max=1)
    with pytest.raises(pydantic.ValidationError, match="required parameter cannot have a default"):
        param(required=True, default="x")
    with pytest.raises(pydantic.ValidationError, match="not a valid environment variable"):
        param(env="1BAD")
    with pytest.raises(pydantic.ValidationError):
        param(type="integer", bogus=1)


def test_default_is_coerced_to_the_type() -> None:
    assert param(type="integer", default="5").default == 5
    assert param(type="boolean", default="yes").default is True


def test_bad_default_is_a_declaration_error() -> None:
    with pytest.raises(pydantic.ValidationError):
        param(type="integer", default="abc")


# -- validate_parameters -------------------------------------------------------------------


@pytest.fixture
def sleep() -> JobType:
    [jobtype_] = load_file(EXAMPLES / "sleep.yaml")
    return jobtype_


def test_error_field_names_the_parameter(sleep: JobType) -> None:
    with pytest.raises(ValidationError) as info:
        sleep.validate_parameters({"seconds": "soon"})
    assert info.value.field == "parameters.seconds"
    assert info.value.status == 422
    assert info.value.to_dict()["field"] == "parameters.seconds"


def test_prefix_is_used_in_the_field(sleep: JobType) -> None:
    with pytest.raises(ValidationError) as info:
        sleep.validate_parameters({"code": 256}, prefix="jobs[3].parameters")
    assert info.value.field == "jobs[3].parameters.code"
    assert "above the maximum 255" in info.value.message


def test_defaults_are_filled_in(sleep: JobType) -> None:
    declared, extra = sleep.validate_parameters({"seconds": "1.5"})
    assert declared == {"seconds": 1.5, "code": 0}
    assert extra == {}


def test_required_parameter_is_required() -> None:
    jt = jobtype({"message": {"required": True}, "n": {"type": "integer"}})
    for values in ({}, {"message": None}, {"n": 1}):
        with pytest.raises(ValidationError) as info:
            jt.validate_parameters(values)
        assert info.value.field == "parameters.message"
        assert "missing required parameter" in info.value.message
    assert jt.validate_parameters({"message": "hi"}) == ({"message": "hi"}, {})


def test_optional_parameter_without_default_is_left_out() -> None:
    jt = jobtype({"n": {"type": "integer"}})
    assert jt.validate_parameters({}) == ({}, {})
    assert jt.validate_parameters({"n": None}) == ({}, {})


def test_unknown_parameters_are_refused(sleep: JobType) -> None:
    with pytest.raises(ValidationError) as info:
        sleep.validate_parameters({"seconds": 1, "colour": "red"})
    assert info.value.field == "parameters.colour"
    assert "unknown parameter 'colour'" in info.value.message
    assert "code, seconds" in info.value.message


def test_unknown_parameters_are_kept_as_extra_when_allowed(sleep: JobType) -> None:
    declared, extra = sleep.validate_parameters(
        {"seconds": 2, "REQUEST": "doQuery", "MAXREC": 10}, allow_unknown=True
    )
    assert declared == {"seconds": 2, "code": 0}
    assert extra == {"REQUEST": "doQuery", "MAXREC": "10"}


def test_known_parameters_are_still_checked_when_unknown_are_allowed(sleep: JobType) -> None:
    with pytest.raises(ValidationError) as info:
        sleep.validate_parameters({"seconds": -1, "LANG": "ADQL"}, allow_unknown=True)
    assert info.value.field == "parameters.seconds"


@pytest.mark.parametrize("values", [["seconds", 1], "seconds=1", None, 5])
def test_parameters_must_be_an_object(sleep: JobType, values: Any) -> None:
    with pytest.raises(ValidationError) as info:
        sleep.validate_parameters(values)
    assert info.value.field == "parameters"


# -- the job type itself -------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["{nope}", "--x={nope}", "{}", "{n.attr}", "{n[0]}"])
def test_command_with_an_unknown_placeholder_is_refused(ref: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="unknown parameter"):
        jobtype({"n": {}}, ["prog", "{n}", ref])


def test_command_with_a_broken_placeholder_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="bad placeholder"):
        jobtype({"n": {}}, ["prog", "{n"])


def test_argv_parameter_missing_from_the_command_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="never mentions '\\{n\\}'"):
        jobtype({"n": {}}, ["prog"])


def test_builtin_placeholders_are_known() -> None:
    jt = jobtype({}, ["{jobtype_dir}/run.sh", "{job_dir}", "{job_id}"])
    assert build_argv(jt, {}, BUILTINS) == ["/types/run.sh", "/jobs/J-1", "J-1"]


def test_parameter_may_not_shadow_a_builtin_placeholder() -> None:
    with pytest.raises(pydantic.ValidationError):
        jobtype({"job_dir": {}}, ["prog", "{job_dir}"])


@pytest.mark.parametrize("name", ["", "1abc", "has space", "a/b", "x" * 65])
def test_job_type_names_are_checked(name: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="not a valid job type name"):
        JobType.model_validate({"name": name, "command": ["prog"]})


def test_job_type_needs_a_command() -> None:
    with pytest.raises(pydantic.ValidationError):
        JobType.model_validate({"name": "t", "command": []})
    with pytest.raises(pydantic.ValidationError):
        JobType.model_validate({"name": "t"})


def test_execution_duration_may_not_exceed_the_maximum() -> None:
    with pytest.raises(pydantic.ValidationError, match="larger than 'max_execution_duration'"):
        jobtype({}, ["prog"], execution_duration=100, max_execution_duration=10)


def test_parameter_names_are_set_from_their_keys() -> None:
    jt = jobtype({"alpha": {}, "beta": {"deliver": "env"}})
    assert [p.name for p in jt.parameters.values()] == ["alpha", "beta"]


def test_placeholders() -> None:
    assert placeholders("--x={a}/{b}") == ["a", "b"]
    assert placeholders("plain") == []
    assert placeholders("{{literal}}") == []


# -- build_argv -----------------------------------------------------------------------------


def test_build_argv_substitutes_element_by_element() -> None:
    jt = jobtype(
        {"n": {"type": "integer"}, "flag": {"type": "boolean"}, "x": {"type": "number"}},
        ["prog", "--n={n}", "{flag}", "{x}", "{job_id}"],
    )
    declared, _ = jt.validate_parameters({"n": "3", "flag": "yes", "x": 0.5})
    assert build_argv(jt, declared, BUILTINS) == ["prog", "--n=3", "true", "0.5", "J-1"]


def test_doubled_braces_are_literal_braces_next_to_a_placeholder() -> None:
    jt = jobtype({"n": {}}, ["prog", "{{{n}}}"])
    assert build_argv(jt, {"n": "v"}, BUILTINS) == ["prog", "{v}"]


def test_doubled_braces_are_literal_braces_in_a_plain_element() -> None:
    jt = jobtype({}, ["awk", "{{print $1}}"])
    assert build_argv(jt, {}, BUILTINS) == ["awk", "{print $1}"]


def test_optional_parameter_without_value_drops_its_element() -> None:
    jt = jobtype({"msg": {"required": True}, "opt": {}}, ["prog", "--opt={opt}", "{msg}", "end"])
    declared, _ = jt.validate_parameters({"msg": "hi"})
    assert build_argv(jt, declared, BUILTINS) == ["prog", "hi", "end"]
    declared, _ = jt.validate_parameters({"msg": "hi", "opt": "o"})
    assert build_argv(jt, declared, BUILTINS) == ["prog", "--opt=o", "hi", "end"]


@pytest.mark.parametrize(
    "value",
    [
        "two words",
        'it\'s "quoted"',
        "a; rm -rf /",
        "$(touch /tmp/pwned)",
        "`id`",
        "x && y || z",
        "> out.txt",
        "{msg}",
        "  padded  ",
        "line\nbreak",
        "*",
        "",
    ],
)
def test_values_stay_one_argv_element_and_are_never_parsed(value: str) -> None:
    jt = jobtype({"msg": {"required": True}}, ["prog", "{msg}", "--tag=[{msg}]"])
    declared, _ = jt.validate_parameters({"msg": value})
    assert build_argv(jt, declared, BUILTINS) == ["prog", value, f"--tag=[{value}]"]


def test_env_only_parameters_never_reach_argv() -> None:
    jt = jobtype({"secret": {"deliver": "env"}}, ["prog"])
    declared, _ = jt.validate_parameters({"secret": "s3cr3t"})
    assert build_argv(jt, declared, BUILTINS) == ["prog"]


def test_render_value() -> None:
    assert render_value(True) == "true"
    assert render_value(False) == "false"
    assert render_value(3) == "3"
    assert render_value(2.5) == "2.5"
    assert render_value("x y") == "x y"


# -- build_env ------------------------------------------------------------------------------


def test_build_env_delivers_env_and_both_parameters() -> None:
    jt = jobtype(
        {
            "visit": {"type": "integer", "deliver": "env"},
            "my-band.name": {"deliver": "env"},
            "repo": {"deliver": "env", "env": "AP_REPO"},
            "flag": {"type": "boolean", "deliver": "both"},
            "plain": {},
        },
        ["prog", "{flag}", "{plain}"],
        env={"CONSTANT": "c", "OMP_NUM_THREADS": "1"},
    )
    declared, _ = jt.validate_parameters(
        {"visit": "12", "my-band.name": "r", "repo": "/repo", "flag": False, "plain": "p"}
    )
    assert build_env(jt, declared) == {
        "CONSTANT": "c",
        "OMP_NUM_THREADS": "1",
        "VISIT": "12",
        "MY_BAND_NAME": "r",
        "AP_REPO": "/repo",
        "FLAG": "false",
    }
    assert build_argv(jt, declared, BUILTINS) == ["prog", "false", "p"]


def test_build_env_leaves_out_parameters_without_value() -> None:
    jt = jobtype({"a": {"deliver": "env"}, "b": {"deliver": "env", "default": "d"}}, ["prog"])
    declared, _ = jt.validate_parameters({})
    assert build_env(jt, declared) == {"B": "d"}


def test_env_name_defaults_to_upper_case() -> None:
    assert param(name="seconds").env_name == "SECONDS"
    assert param(name="a-b.c").env_name == "A_B_C"
    assert param(name="x", env="Custom_1").env_name == "Custom_1"


def test_constant_env_names_are_checked() -> None:
    with pytest.raises(pydantic.ValidationError, match="not a valid environment variable"):
        jobtype({}, ["prog"], env={"BAD-NAME": "x"})


def test_schema_dict_lists_parameters_with_their_env_name(sleep: JobType) -> None:
    schema = sleep.schema_dict()
    assert schema["name"] == "sleep"
    by_name = {p["name"]: p for p in schema["parameters"]}
    assert by_name["seconds"]["type"] == ParamType.NUMBER
    assert by_name["seconds"]["env"] == "SECONDS"
    assert "source" not in schema and "directory" not in schema
