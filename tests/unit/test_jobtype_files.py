"""Loading job types from YAML: the examples, the OCPS format, and errors naming file and line."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from jobmill.domain.errors import JobTypeFileError, ValidationError
from jobmill.domain.jobtype_files import load_file, load_jobtypes
from jobmill.domain.jobtypes import JobType, ParamType, build_argv, build_env

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "jobtypes"
OCPS_EXAMPLE = EXAMPLES / "job_specs.yaml"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load_error(*sources: Path) -> JobTypeFileError:
    with pytest.raises(JobTypeFileError) as info:
        load_jobtypes(sources)
    return info.value


def assert_names(error: JobTypeFileError, path: Path, line: int | None, *words: str) -> None:
    """The error names the file, the line (when given) and the problem."""
    assert error.path == str(path)
    assert error.line == line
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(error).startswith(where), str(error)
    for word in words:
        assert word in error.problem, error.problem
        assert word in str(error)


# -- the examples -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples() -> dict[str, JobType]:
    return load_jobtypes([EXAMPLES])


def test_examples_load(examples: dict[str, JobType]) -> None:
    assert {"echo", "sleep", "fail", "counters"} <= set(examples)
    for name, jobtype in examples.items():
        assert jobtype.name == name
        assert jobtype.source is not None and Path(jobtype.source).parent == EXAMPLES
        assert jobtype.directory == str(EXAMPLES.resolve())


def test_example_echo(examples: dict[str, JobType]) -> None:
    echo = examples["echo"]
    assert echo.command == ["python3", "{jobtype_dir}/scripts/echo.py", "{message}"]
    message = echo.parameters["message"]
    assert message.required and message.type is ParamType.STRING
    assert [(r.name, r.pattern, r.content_type) for r in echo.results] == [
        ("echo", "echo.txt", "text/plain")
    ]
    declared, _ = echo.validate_parameters({"message": "hello world"})
    argv = build_argv(
        echo, declared, {"jobtype_dir": echo.directory, "job_id": "j", "job_dir": "d"}
    )
    assert argv == ["python3", f"{EXAMPLES.resolve()}/scripts/echo.py", "hello world"]
    assert Path(argv[1]).is_file()


def test_example_sleep_fail_counters(examples: dict[str, JobType]) -> None:
    sleep = examples["sleep"]
    assert sleep.validate_parameters({}) == ({"seconds": 30, "code": 0}, {})
    assert sleep.parameters["seconds"].type is ParamType.NUMBER
    assert (sleep.parameters["seconds"].min, sleep.parameters["seconds"].max) == (0, 86400)
    assert sleep.parameters["code"].type is ParamType.INTEGER
    fail = examples["fail"]
    assert fail.validate_parameters({}) == ({"code": 3}, {})
    counters = examples["counters"]
    assert counters.validate_parameters({}) == ({"interval": 0.1}, {})
    assert counters.execution_duration == 600
    for jobtype in (sleep, fail, counters):
        script = Path(jobtype.command[1].replace("{jobtype_dir}", str(EXAMPLES)))
        assert script.is_file(), script


def test_example_ocps_job_specs() -> None:
    if not OCPS_EXAMPLE.exists():
        pytest.skip("no examples/jobtypes/job_specs.yaml")
    types = load_file(OCPS_EXAMPLE)
    assert types
    for jobtype in types:
        assert jobtype.parameters
        for name, parameter in jobtype.parameters.items():
            assert parameter.required and parameter.type is ParamType.STRING
            assert parameter.deliver == "env" and parameter.env_name == name
        script = Path(jobtype.command[-1])
        assert script.is_absolute() and script.is_file(), jobtype.command
        values = {name: f"v-{name}" for name in jobtype.parameters}
        declared, _ = jobtype.validate_parameters(values)
        assert build_env(jobtype, declared) == values
        assert build_argv(jobtype, declared, {}) == jobtype.command
    by_name = {t.name: t for t in types}
    if "ap" in by_name:  # the OCPS prototype's Alert Production type
        assert list(by_name["ap"].parameters) == [
            "AP_JOB_OUTPUT_DIR",
            "AP_VISIT_ID",
            "AP_CCD_NUM",
            "AP_REPO",
            "AP_TEMPLATE",
            "AP_CALIB",
            "AP_FILTER",
        ]


def test_single_file_source() -> None:
    assert [t.name for t in load_jobtypes([EXAMPLES / "echo.yaml"]).values()] == ["echo"]


def test_directory_loads_yaml_and_yml_only_not_recursively(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "name: a\ncommand: [prog]\n")
    write(tmp_path, "b.yml", "name: b\ncommand: [prog]\n")
    write(tmp_path, "c.txt", "name: c\ncommand: [prog]\n")
    write(tmp_path, "README.md", "not yaml: [\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "d.yaml", "name: d\ncommand: [prog]\n")
    assert sorted(load_jobtypes([tmp_path])) == ["a", "b"]


def test_several_documents_per_file_and_empty_documents(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "many.yaml",
        """
        # comment only
        ---
        name: one
        command: [prog]
        ---
        ---
        name: two
        command: [prog, "{x}"]
        parameters:
          x: {type: integer, default: 1}
        """,
    )
    types = load_file(path)
    assert [t.name for t in types] == ["one", "two"]
    assert types[1].validate_parameters({}) == ({"x": 1}, {})


def test_empty_file_has_no_job_types(tmp_path: Path) -> None:
    assert load_file(write(tmp_path, "empty.yaml", "")) == []


def test_relative_command_beside_the_file_is_made_absolute(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "run.sh").write_text("#!/bin/sh\n")
    [jobtype] = load_file(write(tmp_path, "t.yaml", "name: t\ncommand: [bin/run.sh, x]\n"))
    assert jobtype.command == [str((tmp_path / "bin" / "run.sh").resolve()), "x"]
    [jobtype] = load_file(write(tmp_path, "u.yaml", "name: u\ncommand: [python3, x]\n"))
    assert jobtype.command == ["python3", "x"]


# -- broken files -----------------------------------------------------------------------------


def test_invalid_yaml_names_the_line_of_the_syntax_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "broken.yaml",
        """
        name: broken
        description: fine
        command: [prog, "{x}"
        parameters: {}
        """,
    )
    error = load_error(path)
    assert_names(error, path, 4, "invalid YAML")


def test_invalid_yaml_bad_indentation(tmp_path: Path) -> None:
    path = write(tmp_path, "indent.yaml", "name: x\ncommand: [prog]\n  bad: indent\n")
    error = load_error(path)
    assert error.line == 3
    assert "invalid YAML" in error.problem


def test_bad_field_deep_inside_names_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "deep.yaml",
        """
        # a job type with a wrong parameter type
        name: deep
        command: [prog, "{x}"]
        parameters:
          x:
            description: the x
            type: bogus
        """,
    )
    error = load_error(path)
    assert_names(error, path, 7, "parameters.x.type", "'string'")


def test_bad_item_in_a_list_names_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "results.yaml",
        """
        name: results
        command: [prog]
        results:
          - name: a
            pattern: a.txt
          - name: b
            content_type: text/plain
        """,
    )
    assert_names(load_error(path), path, 6, "results.1.pattern", "Field required")


def test_unknown_field_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "extra.yaml", "name: extra\ncommand: [prog]\ncolour: red\n")
    assert_names(load_error(path), path, 3, "colour", "Extra inputs are not permitted")


def test_wrongly_typed_resource_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "res.yaml", "name: res\ncommand: [prog]\nresources:\n  cpus: 0\n")
    assert_names(load_error(path), path, 4, "resources.cpus")


def test_bad_declaration_in_a_later_document_names_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "two.yaml",
        """
        name: fine
        command: [prog]
        ---
        name: bad
        command: [prog, "{n}"]
        parameters:
          n: {type: integer, min: 5, max: 1}
        """,
    )
    error = load_error(path)
    assert error.line == 7
    assert "parameters.n" in error.problem and "'min' is larger than 'max'" in error.problem


def test_unknown_placeholder_in_a_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "ph.yaml", "name: ph\ncommand: [prog, '{nope}']\n")
    assert_names(load_error(path), path, 2, "unknown parameter '{nope}'")


def test_document_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "list.yaml", "name: ok\ncommand: [prog]\n---\n- a\n- b\n")
    assert_names(load_error(path), path, 4, "must be a mapping")


def test_duplicate_job_type_names_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", "name: same\ncommand: [prog]\n")
    second = write(tmp_path, "b.yaml", "# again\nname: same\ncommand: [other]\n")
    error = load_error(tmp_path)
    assert error.path == str(second)
    assert str(second) in str(error)
    assert "'same' is already defined in" in error.problem and str(first) in error.problem


def test_duplicate_job_type_names_across_sources(tmp_path: Path) -> None:
    write(tmp_path, "echo.yaml", "name: echo\ncommand: [prog]\n")
    error = load_error(EXAMPLES, tmp_path)
    assert error.path == str(tmp_path / "echo.yaml")
    assert str(EXAMPLES / "echo.yaml") in error.problem


def test_duplicate_job_type_name_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "name: same\ncommand: [prog]\n")
    second = write(tmp_path, "b.yaml", "# again\nname: same\ncommand: [other]\n")
    assert_names(load_error(tmp_path), second, 2, "already defined")


def test_duplicate_names_within_one_file(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", "name: twice\ncommand: [a]\n---\nname: twice\ncommand: [b]\n")
    error = load_error(path)
    assert error.path == str(path) and "'twice' is already defined" in error.problem


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert_names(load_error(missing), missing, None, "no such file or directory")


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\ncommand: [prog]\n")
    error = load_error(path)
    assert error.path == str(path) and "cannot read" in error.problem


def test_bad_default_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "default.yaml",
        """
        name: d
        command: [prog, "{n}"]
        parameters:
          n:
            type: integer
            default: many
        """,
    )
    error = load_error(path)
    assert error.path == str(path) and error.line in (4, 6)
    assert "default" in error.problem


# -- the OCPS job_specs.yaml format --------------------------------------------------------------

OCPS_SPECS = """
type:
  ap:
    script: jobs/ap_job.sh
    env:
      - AP_JOB_OUTPUT_DIR
      - AP_VISIT_ID
      - AP_REPO
  calib:
    script: calib.sh
    env: [CALIB_REPO]
"""


@pytest.fixture
def ocps_dir(tmp_path: Path) -> Path:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "ap_job.sh").write_text("#!/bin/sh\necho ap\n")
    (tmp_path / "calib.sh").write_text("#!/bin/sh\necho calib\n")
    os.chmod(tmp_path / "jobs" / "ap_job.sh", 0o755)
    os.chmod(tmp_path / "calib.sh", 0o755)
    write(tmp_path, "job_specs.yaml", OCPS_SPECS)
    return tmp_path


def test_ocps_types_have_required_string_env_parameters(ocps_dir: Path) -> None:
    types = load_jobtypes([ocps_dir / "job_specs.yaml"])
    assert sorted(types) == ["ap", "calib"]
    ap = types["ap"]
    assert list(ap.parameters) == ["AP_JOB_OUTPUT_DIR", "AP_VISIT_ID", "AP_REPO"]
    for name, parameter in ap.parameters.items():
        assert parameter.type is ParamType.STRING
        assert parameter.required
        assert parameter.deliver == "env"
        assert parameter.env_name == name
    declared, extra = ap.validate_parameters(
        {"AP_JOB_OUTPUT_DIR": "/out", "AP_VISIT_ID": 123, "AP_REPO": "/repo"}
    )
    assert extra == {}
    assert build_env(ap, declared) == {
        "AP_JOB_OUTPUT_DIR": "/out",
        "AP_VISIT_ID": "123",
        "AP_REPO": "/repo",
    }
    with pytest.raises(ValidationError) as info:
        ap.validate_parameters({"AP_VISIT_ID": "1", "AP_REPO": "/r"})
    assert info.value.field == "parameters.AP_JOB_OUTPUT_DIR"


def test_ocps_script_that_is_not_executable_is_refused_naming_file_and_line(
    ocps_dir: Path,
) -> None:
    os.chmod(ocps_dir / "calib.sh", 0o644)
    path = ocps_dir / "job_specs.yaml"
    assert_names(load_error(path), path, 9, "is not executable")


def test_ocps_missing_script_is_refused_naming_file_and_line(
    ocps_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ocps_dir / "jobs" / "ap_job.sh").unlink()
    monkeypatch.chdir(ocps_dir / "jobs")
    path = ocps_dir / "job_specs.yaml"
    error = load_error(path)
    assert_names(error, path, 3, "script 'jobs/ap_job.sh' not found")
    assert str(ocps_dir / "jobs" / "jobs" / "ap_job.sh") in error.problem


def test_ocps_script_is_taken_from_the_working_directory_as_the_prototype_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prototype's layout: ``server/jobs/job_specs.yaml`` says ``script: jobs/ap_job.sh``
    and the server runs in ``server/``; a ``jobs/ap_job.sh`` there wins over one beside the
    file."""
    server = tmp_path / "server"
    (server / "jobs" / "jobs").mkdir(parents=True)
    for script in (server / "jobs" / "ap_job.sh", server / "jobs" / "jobs" / "ap_job.sh"):
        script.write_text("#!/bin/sh\n")
        os.chmod(script, 0o755)
    write(server / "jobs", "job_specs.yaml", OCPS_SPECS.replace("calib.sh", "jobs/ap_job.sh"))
    monkeypatch.chdir(server)
    types = load_jobtypes([server / "jobs" / "job_specs.yaml"])
    assert types["ap"].command == [str(server / "jobs" / "ap_job.sh")]
    assert types["ap"].ocps_specs and types["calib"].ocps_specs
    monkeypatch.chdir(tmp_path)  # elsewhere: beside the file
    types = load_jobtypes([server / "jobs" / "job_specs.yaml"])
    assert types["ap"].command == [str(server / "jobs" / "jobs" / "ap_job.sh")]


def test_ocps_executable_script_with_a_directory_is_absolute(ocps_dir: Path) -> None:
    types = load_jobtypes([ocps_dir / "job_specs.yaml"])
    assert types["ap"].command == [str((ocps_dir / "jobs" / "ap_job.sh").resolve())]
    assert build_argv(types["ap"], {}, {}) == types["ap"].command


def test_ocps_executable_script_beside_the_file_is_absolute(ocps_dir: Path) -> None:
    types = load_jobtypes([ocps_dir / "job_specs.yaml"])
    assert types["calib"].command == [str((ocps_dir / "calib.sh").resolve())]


def test_ocps_type_without_script(tmp_path: Path) -> None:
    path = write(tmp_path, "job_specs.yaml", "type:\n  ap:\n    env: [A]\n")
    assert_names(load_error(path), path, 2, "type 'ap' needs a 'script'")


def test_ocps_env_must_be_a_list_of_names(tmp_path: Path) -> None:
    path = write(tmp_path, "job_specs.yaml", "type:\n  ap:\n    script: a.sh\n    env: A_B\n")
    assert_names(load_error(path), path, 4, "'env' must be a list")
    path = write(tmp_path, "job_specs.yaml", "type:\n  ap:\n    script: a.sh\n    env: [1, 2]\n")
    assert_names(load_error(path), path, 4, "'env' must be a list")


def test_ocps_bad_type_name_names_the_line_of_the_type(tmp_path: Path) -> None:
    path = write(
        tmp_path, "job_specs.yaml", "type:\n  ok:\n    script: a.sh\n  1bad:\n    script: b.sh\n"
    )
    for name in ("a.sh", "b.sh"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        os.chmod(tmp_path / name, 0o755)
    error = load_error(path)
    assert error.line == 4 and "not a valid job type name" in error.problem


def test_ocps_types_take_part_in_duplicate_checks(ocps_dir: Path) -> None:
    write(ocps_dir, "more.yaml", "name: calib\ncommand: [prog]\n")
    error = load_error(ocps_dir)
    assert "'calib' is already defined" in error.problem
