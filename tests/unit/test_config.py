"""Settings: the TOML config file in sections, the environment over it, one table of both."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobmill.cli.main import app
from jobmill.config import (
    BOOL,
    LIST,
    NUMBER,
    SETTINGS,
    SIZE,
    TEXT,
    WHOLE,
    WORD,
    ConfigError,
    Settings,
    read_environment,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
CLIENT_VARIABLES = {"JOBMILL_CONFIG", "JOBMILL_URL", "JOBMILL_API_TOKEN"}  # not server settings
CLIENT_VARIABLES |= {"JOBMILL_WORKERS"}  # read by the serve command itself (--workers)
ALL_VARIABLES = {name for s in SETTINGS for name in s.env}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting from the environment the tests run in (the token file fixture's included)."""
    for name in ALL_VARIABLES | {"JOBMILL_CONFIG"}:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobmill.toml"
    path.write_text(text, encoding="utf-8")
    return path


FULL = """
[server]
home = "/var/lib/jobmill"
host = "0.0.0.0"
port = 9000
public_url = "https://jobs.example.org/"
access_log = true

[database]
url = "postgresql+psycopg://jobmill@db/jobmill"

[jobs]
jobtypes = ["/etc/jobmill/a", "/etc/jobmill/b"]
executors = "local,slurm"
max_local_jobs = 3
kill_grace = 2.5

[security]
admins = ["alice"]
anonymous = "read"
allowed_origins = ["https://portal.example.org/"]
log_roots = "none"
umask = "027"

[limits]
max_upload = "1G"
min_free = 0
max_wait_paths = 0

[data]
stable_seconds = 0

[slurm]
partition = "short"
timeout = 12

[htcondor]
schedd = "schedd@submit"

[ocps]
basepath = "ocps/v3/"
domain = "example.org"
protocol = "https"
wait_for_dat = true
"""


def test_settings_from_the_file_only(tmp_path: Path) -> None:
    s = Settings.from_env(config=write(tmp_path, FULL))
    assert (s.home, s.host, s.port, s.public_url) == (
        Path("/var/lib/jobmill"),
        "0.0.0.0",
        9000,
        "https://jobs.example.org",
    )
    assert s.access_log is True and s.database_url == "postgresql+psycopg://jobmill@db/jobmill"
    assert s.jobtypes == ("/etc/jobmill/a", "/etc/jobmill/b")
    assert s.executors == ("local", "slurm") and s.max_local_jobs == 3 and s.kill_grace == 2.5
    assert (s.admins, s.anonymous, s.allowed_origins) == (
        ("alice",),
        "read",
        ("https://portal.example.org",),
    )
    assert s.log_roots == () and s.umask == 0o027
    assert (s.max_upload_bytes, s.min_free, s.max_wait_paths) == (1 << 30, 0, 1)
    assert s.stable_seconds == 0.0
    assert (s.slurm_partition, s.slurm_command_timeout) == ("short", 12.0)
    assert s.condor_schedd == "schedd@submit" and s.ocps_wait_for_dat == ("*",)
    assert s.ocps_basepath == "/ocps/v3"
    assert s.callback_url == "https://jobs.example.org"  # public_url wins over API_DOMAIN
    ocps = Settings.from_env(config=write(tmp_path, "[ocps]\ndomain = 'example.org'\n"))
    assert ocps.with_(port=9123).callback_url == "http://example.org:9123"


def test_jobmill_config_names_the_file(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("JOBMILL_CONFIG", str(write(tmp_path, "[jobs]\nmax_local_jobs = 5\n")))
    assert Settings.from_env().max_local_jobs == 5


def test_the_environment_overrides_the_file_and_options_override_both(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, FULL)
    clean_env.setenv("JOBMILL_PORT", "9100")
    clean_env.setenv("JOBMILL_SLURM_PARTITION", "long")
    clean_env.setenv("JOBMILL_MAX_LOCAL_JOBS", "")  # empty: unset, the file's value stays
    s = Settings.from_env(config=path)
    assert (s.port, s.slurm_partition, s.max_local_jobs) == (9100, "long", 3)
    assert Settings.from_env(config=path, port=9200, host=None).port == 9200
    assert Settings.from_env(config=path, port=9200, host=None).host == "0.0.0.0"


def test_api_port_is_the_fallback_of_jobmill_port(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("API_PORT", "9123")
    assert Settings.from_env().port == 9123
    clean_env.setenv("JOBMILL_PORT", "9124")
    assert Settings.from_env().port == 9124


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[jobs]\nmax_local_job = 3\n", r"\[jobs\] unknown key 'max_local_job' \(did you mean"),
        ("[job]\nmax_local_jobs = 3\n", r"unknown section \[job\] \(did you mean 'jobs'"),
        ("port = 8080\n", r"'port' is not in a section \(it belongs in \[server\]\)"),
        ("[server]\nport = '8080'\n", r"\[server\] port: must be a whole number, not a string"),
        ("[server]\nport = true\n", r"\[server\] port: must be a whole number, not a boolean"),
        ("[server]\naccess_log = 'yes'\n", r"\[server\] access_log: must be true or false"),
        ("[jobs]\nkill_grace = 'soon'\n", r"\[jobs\] kill_grace: must be a number, not a str"),
        ("[jobs]\njobtypes = [1, 2]\n", r"\[jobs\] jobtypes: must be a list of strings"),
        ("[security]\numask = 22\n", r"\[security\] umask: must be a string"),
        ("[security]\numask = '1000'\n", r"\[security\] umask: must be between 000 and 777"),
        ("[limits]\nmax_upload = 'lots'\n", r"\[limits\] max_upload: 'lots' is not a size"),
        ("[slurm]\ntimeout = -1\n", r"\[slurm\] timeout: must be a positive number of seconds"),
        ("[ocps]\ncors_origins = ['ftp://x']\n", r"\[ocps\] cors_origins: 'ftp://x' is not an"),
        ("[security]\nanonymous = 'all'\n", r"\[security\] anonymous: 'all' is not 'none' or"),
        ("[server\n", r"not a valid TOML file"),
        ("server = 3\n", r"\[server\] must be a section, not a value"),
    ],
)
def test_a_bad_file_stops_naming_file_section_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        Settings.from_env(config=path)
    assert str(caught.value).startswith(f"{path}: ")


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        Settings.from_env(config=tmp_path / "nope.toml")


def test_a_bad_variable_is_named(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("JOBMILL_KILL_GRACE", "soon")  # was a traceback before
    with pytest.raises(SystemExit, match="JOBMILL_KILL_GRACE: 'soon' is not a number"):
        Settings.from_env()


def test_serve_stops_with_exit_code_2_on_a_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nprot = 1\n")
    result = CliRunner().invoke(app, ["serve", "--config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}: [server] unknown key 'prot'")


# -- the reader's table against the documentation and the dataclass ---------------------------

SAMPLES = {  # a value of each kind that differs from every default
    TEXT: "/elsewhere",
    LIST: "alpha,beta",
    NUMBER: "7.5",
    WHOLE: "7",
    SIZE: "3M",
    BOOL: "true",
    WORD: "alpha",
}
SPECIAL = {  # variables whose values must have a shape of their own
    "JOBMILL_ANONYMOUS": "read",
    "JOBMILL_UMASK": "022",
    "JOBMILL_ALLOWED_ORIGINS": "https://a.example.org",
    "JOBMILL_OCPS_CORS_ORIGINS": "https://a.example.org",
    "API_PROTOCOL": "https",
}


def test_every_variable_of_the_table_sets_its_field(clean_env: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    fields = set(Settings.__dataclass_fields__)
    for setting in SETTINGS:
        assert setting.field in fields, setting
        for name in setting.env:
            value = SPECIAL.get(name, SAMPLES[setting.accepts])
            clean_env.setenv(name, value)
            read = read_environment()
            clean_env.delenv(name)
            assert setting.field in read, name
            assert read[setting.field] != getattr(defaults, setting.field), name


def test_sections_and_keys_are_unique_and_follow_the_variable_names() -> None:
    seen = {(s.section, s.key) for s in SETTINGS}
    assert len(seen) == len(SETTINGS)
    prefixes = {"database": "DATABASE_", "data": "DATA_", "slurm": "SLURM_", "lsf": "LSF_"}
    prefixes |= {"pbs": "PBS_", "htcondor": "CONDOR_", "ocps": "OCPS_"}
    for s in SETTINGS:
        name = s.env[0].removeprefix("JOBMILL_").removeprefix("API_")
        assert name.removeprefix(prefixes.get(s.section, "")).lower() == s.key, s


def _docs() -> str:
    return DOCS.read_text(encoding="utf-8")


def test_the_docs_table_of_keys_is_the_readers_table() -> None:
    text = _docs().split("## Config file", 1)[1]
    rows = re.findall(r"^\| `\[([a-z]+)\]` \| `([a-z_]+)` \| ([^|]+) \|", text, re.MULTILINE)
    documented = [(sec, key, tuple(re.findall(r"`([A-Z_]+)`", env))) for sec, key, env in rows]
    assert documented == [(s.section, s.key, s.env) for s in SETTINGS]


def test_every_documented_variable_is_read() -> None:
    """Every variable the configuration page names (its table and its text) is in the reader's
    table, or is one of the client's."""
    named = set(re.findall(r"`((?:JOBMILL|API)_[A-Z_]+)`", _docs()))
    named -= {"JOBMILL_PBS_"}  # "JOBMILL_PBS_*"
    assert named - ALL_VARIABLES <= CLIENT_VARIABLES, named - ALL_VARIABLES - CLIENT_VARIABLES
    main_table = _docs().split("## Config file", 1)[0]
    in_table = set(re.findall(r"`((?:JOBMILL|API)_[A-Z_]+)`", main_table))
    for name in in_table - CLIENT_VARIABLES - {"JOBMILL_PBS_"}:
        assert name in ALL_VARIABLES, name


def test_the_config_file_example_in_the_docs_is_valid(tmp_path: Path) -> None:
    example = _docs().split("## Config file", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    settings = Settings.from_env(config=write(tmp_path, example))
    assert settings.executors == ("slurm",) and settings.log_roots == ("/scratch/{user}/logs",)
