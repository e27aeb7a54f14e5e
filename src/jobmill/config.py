"""Settings: a TOML config file in sections, and ``JOBMILL_*`` environment variables (and the
OCPS ``API_*`` ones), which override it; see docs/configuration.md.

``SETTINGS`` is the one table of what can be set: each row names the file's section and key, the
``Settings`` field, how a value is read, and the environment variables that set it too.
``read_environment`` is the one reader of the environment, ``read_file`` the one of the file
(``JOBMILL_CONFIG``, or ``jobmill serve --config``). A bad value stops the start with a
``ConfigError`` naming the variable, or the file, section and key.
"""

from __future__ import annotations

import difflib
import getpass
import os
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobmill.paths import default_token_file, sqlite_url

CONFIG_ENV = "JOBMILL_CONFIG"


class ConfigError(SystemExit):
    """A setting that cannot be used: the message names where it came from. Uncaught, Python
    prints it and exits; the CLI prints it as one ``error:`` line and exits 2."""


def _list(value: str | None) -> list[str]:
    if not value:
        return []
    parts = value.replace(",", os.pathsep).split(os.pathsep)
    return [p.strip() for p in parts if p.strip()]


def _login_name() -> str:
    """The account running jobmill: ``$USER``, else the password database's name for the uid."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "local"


@dataclass(frozen=True)
class Settings:
    """Everything jobmill can be configured with; ``from_env`` reads the config file and the
    environment. The fields are flat; ``SETTINGS`` groups them in the file's sections: [server],
    [database], [jobs], [security], [limits], [data], [slurm], [lsf], [pbs], [htcondor], [ocps].
    """

    home: Path = Path(".jobmill")
    database_url: str | None = None
    jobtypes: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    ocps_basepath: str = "/api/v1"
    max_local_jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    kill_grace: float = 5.0
    poll_interval: float = 1.0
    engine_lease: float = 5.0  # seconds a dead engine's lease blocks a standby (service.lease)
    pass_env: tuple[str, ...] = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
    node: str = field(default_factory=socket.gethostname)
    local_user: str = field(default_factory=_login_name)  # the server's own user
    max_request_bytes: int = 1 << 20
    max_batch_request_bytes: int = 64 << 20
    max_upload_bytes: int = 100 << 20  # multipart UWS requests (file uploads)
    max_batch_jobs: int = 100_000
    max_wait: float = 600.0
    access_log: bool = False
    slow_submit: float = 5.0
    executors: tuple[str, ...] = ("local",)
    condor_schedd: str | None = None  # HTCondor schedd name; None: the configuration's default
    condor_collector: str | None = None  # HTCondor pool (host[:port]); None: CONDOR_HOST
    # Batch executors (docs/slurm.md, docs/lsf.md). ``*_bin``: the directory of the scheduler's
    # commands ("" = found on PATH); ``*_lost_after``: seconds a job may be missing from every
    # scheduler answer before it is declared lost.
    slurm_bin: str = ""
    slurm_partition: str | None = None
    slurm_account: str | None = None
    slurm_command_timeout: float = 30.0
    slurm_lost_after: float = 60.0
    slurm_array_min: int = 8  # jobs of one kind submitted together as a job array; 0: never
    lsf_bin: str = ""
    lsf_queue: str | None = None
    lsf_project: str | None = None
    lsf_command_timeout: float = 30.0
    lsf_lost_after: float = 60.0
    pbs_bin: str = ""
    pbs_queue: str | None = None
    pbs_account: str | None = None
    pbs_command_timeout: float = 30.0
    pbs_lost_after: float = 60.0
    data_root: Path | None = None  # relative data paths resolve here; None: the server's cwd
    scan_roots: tuple[str, ...] = ()  # roots to scan instead of watch (network filesystems)
    scan_interval: float = 2.0
    stable_seconds: float = 0.0  # 0: a file counts once closed
    # OCPS job types that wait for <job_id>.dat; "*": all; None: those of job_specs.yaml files
    ocps_wait_for_dat: tuple[str, ...] | None = None
    ocps_monitor_job_id: bool = False  # monitor/complete also takes the job id as key (weaker)
    ocps_command_type: str | None = None  # the job type that runs the successor's PUT commands
    # -- identity (api/auth.py; docs/security.md) ---------------------------------------------
    admins: tuple[str, ...] = ()  # users who are administrators (besides admin tokens)
    anonymous: str = "none"  # callers without a token: "none" (401) or "read" (GET/HEAD only)
    token_file: Path | None = field(default_factory=default_token_file)  # the local credential
    # -- browser safety (api/browser.py; docs/security.md) ------------------------------------
    allowed_hosts: tuple[str, ...] = ()  # Host names besides loopback and ours; "*": any (unsafe)
    allowed_origins: tuple[str, ...] = ()  # browser origins (scheme://host[:port]) that may post
    ocps_cors_origins: tuple[str, ...] = ()  # origins the OCPS face answers CORS for; "*": any
    # -- confinement and limits (docs/security.md) --------------------------------------------
    # Roots: "{user}" is the caller; a relative log root lies under home. (): log_dir refused;
    # data_roots (): data_root (or the server's cwd).
    log_roots: tuple[str, ...] = ("logs/{user}",)
    data_roots: tuple[str, ...] = ()
    umask: int = 0o077  # of local job processes (and their log files)
    max_job_output: int = 1 << 30  # stdout + stderr of a local job; 0: no cap
    min_free: int = 100 << 20  # free bytes under home needed to create and start jobs; 0: off
    max_wait_paths: int = 32  # patterns in one job's wait_for
    max_wait_wildcard_dirs: int = 4  # of which with a wildcard in a directory ("**" too)
    max_user_waits: int = 10_000  # jobs of one user waiting for data (or PENDING with one)
    max_user_wildcards: int = 1000  # patterns with a wildcard among one user's waiting jobs
    max_user_wildcard_dirs: int = 64  # of which with a wildcard in a directory
    # -- OCPS callbacks (docs/ocps.md) ---------------------------------------------------------
    api_protocol: str = "http"  # OCPS API_PROTOCOL: the scheme of the callback URL
    api_domain: str | None = None  # OCPS API_DOMAIN: its host; None: see callback_url

    @classmethod
    def from_env(cls, config: str | Path | None = None, **overrides: Any) -> Settings:
        """The settings of the config file (``config``, else ``$JOBMILL_CONFIG``, else none),
        then the environment, then ``overrides`` (command-line options; None: not given)."""
        values: dict[str, Any] = {}
        path = config if config is not None else _getenv(os.environ, CONFIG_ENV)
        if path is not None:
            values.update(read_file(Path(path)))
        values.update(read_environment())
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("home"), str):
            values["home"] = Path(values["home"])
        if isinstance(values.get("jobtypes"), list):
            values["jobtypes"] = tuple(values["jobtypes"])
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def db_url(self) -> str:
        return self.database_url or sqlite_url(self.home.resolve())

    @property
    def callback_url(self) -> str:
        """The base URL jobs use to reach jobmill (reports, BATCH_UPDATE_URL)."""
        if self.public_url:
            return self.public_url
        protocol, domain = self.api_protocol, self.api_domain
        if domain is None:
            domain = self.host if self.host not in ("0.0.0.0", "::") else socket.getfqdn()
        if ":" in domain and not domain.startswith("["):
            domain = f"[{domain}]"
        return f"{protocol}://{domain}:{self.port}"


# -- how values are read ------------------------------------------------------------------------
# A reader takes where the value comes from (for its error: a variable's name, or the file,
# section and key) and the value: a string from the environment, or from the file a string, a
# list of strings, or a number or boolean written as a string. ``None``: leave the default.

Raw = str | list[str]
Reader = Callable[[str, Raw], Any]

_OFF = ("0", "none", "off", "no", "false")


def _text(where: str, value: Raw) -> str:
    return value if isinstance(value, str) else ",".join(value)


def _path(where: str, value: Raw) -> Path:
    return Path(_text(where, value))


def _user_path(where: str, value: Raw) -> Path:
    return Path(_text(where, value)).expanduser()


def _url(where: str, value: Raw) -> str:
    return _text(where, value).rstrip("/")


def _basepath(where: str, value: Raw) -> str:
    return "/" + _text(where, value).strip("/")


def _names(where: str, value: Raw) -> tuple[str, ...]:
    """A list: ``a,b`` or ``a:b`` in a variable; in the file a list of strings, or such a
    string."""
    if isinstance(value, str):
        return tuple(_list(value))
    return tuple(v.strip() for v in value if v.strip())


def _some_names(where: str, value: Raw) -> tuple[str, ...] | None:
    """A list that, empty, leaves the default (job types, executors)."""
    return _names(where, value) or None


def _roots(where: str, value: Raw) -> tuple[str, ...]:
    """Path roots; ``none`` (or ``off``...): none at all."""
    if isinstance(value, str) and value.strip().lower() in _OFF:
        return ()
    return _names(where, value)


def _commas(where: str, value: Raw) -> tuple[str, ...]:
    """Names separated by commas or spaces (not ``:``: hosts and origins contain it)."""
    text = value if isinstance(value, str) else ",".join(value)
    return tuple(p.strip() for p in text.replace(",", " ").split() if p.strip())


def _origins(wildcard: bool) -> Reader:
    def read(where: str, value: Raw) -> tuple[str, ...]:
        found = []
        for entry in _commas(where, value):
            if entry == "*" and wildcard:
                found.append(entry)
                continue
            scheme, sep, rest = entry.rstrip("/").partition("://")
            if scheme.lower() not in ("http", "https") or not sep or not rest:
                raise ConfigError(f"{where}: '{entry}' is not an origin (scheme://host[:port])")
            if any(c in rest for c in "/?#@"):
                raise ConfigError(f"{where}: '{entry}' is an origin without a path")
            found.append(entry.rstrip("/").lower())
        return tuple(found)

    return read


def _flag(where: str, value: Raw) -> bool:
    return _text(where, value).strip().lower() in ("1", "true", "yes", "on")


def _number(where: str, value: Raw) -> float:
    try:
        return float(_text(where, value))
    except ValueError:
        raise ConfigError(f"{where}: '{value}' is not a number") from None


def _seconds(where: str, value: Raw) -> float:
    try:
        seconds = float(_text(where, value))
    except ValueError:
        raise ConfigError(f"{where}: '{value}' is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{where}: must be a positive number of seconds")
    return seconds


def _seconds_or_zero(where: str, value: Raw) -> float:
    try:
        if float(_text(where, value)) == 0:
            return 0.0
    except ValueError:
        pass
    return _seconds(where, value)


def _int(where: str, value: Raw) -> int:
    try:
        return int(_text(where, value))
    except ValueError:
        raise ConfigError(f"{where}: '{value}' is not a whole number") from None


def _at_least(least: int) -> Reader:
    """A whole number, raised to ``least`` when below it."""
    return lambda where, value: max(least, _int(where, value))


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(where: str, value: Raw) -> int:
    """A number of bytes, optionally with a binary unit: ``1048576``, ``512K``, ``100M``, ``2G``."""
    text = _text(where, value).strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    try:
        size = int(text.removesuffix(unit)) * _UNITS[unit] if unit else int(text)
    except ValueError:
        raise ConfigError(
            f"{where}: '{value}' is not a size (bytes, or e.g. 512K, 100M, 2G)"
        ) from None
    if size <= 0:
        raise ConfigError(f"{where}: must be a positive size")
    return size


def _size_or_off(where: str, value: Raw) -> int:
    return 0 if _text(where, value).strip().lower() in _OFF else _size(where, value)


def _anonymous(where: str, value: Raw) -> str:
    word = _text(where, value).strip().lower()
    if word not in ("none", "read"):
        raise ConfigError(f"{where}: '{value}' is not 'none' or 'read'")
    return word


def _umask(where: str, value: Raw) -> int:
    try:
        mask = int(_text(where, value).strip().lower().removeprefix("0o"), 8)
    except ValueError:
        raise ConfigError(f"{where}: '{value}' is not an octal mask like 077") from None
    if not 0 <= mask <= 0o777:
        raise ConfigError(f"{where}: must be between 000 and 777")
    return mask


def _wait_for_dat(where: str, value: Raw) -> tuple[str, ...] | None:
    """OCPS job types that wait for ``<job_id>.dat``: a list, or a word for none, all, or the
    default (``specs``: the types of ``job_specs.yaml`` files)."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("specs", "default"):
            return None
        if word in _OFF:
            return ()
        if word in ("1", "on", "true", "yes", "all", "*"):
            return ("*",)
    return _names(where, value)


# What a key of the file may hold (TOML types), in words for the error.
TEXT = ((str,), "a string")
LIST = ((str, list), "a list of strings (or one comma-separated string)")
NUMBER = ((int, float), "a number")
WHOLE = ((int,), "a whole number")
SIZE = ((int, str), 'a number of bytes, or a string such as "100M"')
BOOL = ((bool,), "true or false")
WORD = ((str, bool, list), "a list of job types, or true or false")


@dataclass(frozen=True)
class Setting:
    """One setting: where it lives in the file, the field it sets, how it is read, and the
    environment variables that set it too (the first one set wins)."""

    section: str
    key: str
    field: str
    read: Reader
    accepts: tuple[tuple[type, ...], str]  # the TOML types of the file's value, in words
    env: tuple[str, ...]


def _s(section: str, key: str, read: Reader, accepts: Any, *env: str, to: str = "") -> Setting:
    return Setting(section, key, to or key, read, accepts, env)


# fmt: off
SETTINGS: tuple[Setting, ...] = (
    _s("server", "home", _path, TEXT, "JOBMILL_HOME"),
    _s("server", "host", _text, TEXT, "JOBMILL_HOST"),
    _s("server", "port", _int, WHOLE, "JOBMILL_PORT", "API_PORT"),
    _s("server", "public_url", _url, TEXT, "JOBMILL_PUBLIC_URL"),
    _s("server", "access_log", _flag, BOOL, "JOBMILL_ACCESS_LOG"),
    _s("server", "node", _text, TEXT, "JOBMILL_NODE"),
    _s("database", "url", _text, TEXT, "JOBMILL_DATABASE_URL", to="database_url"),
    _s("jobs", "jobtypes", _some_names, LIST, "JOBMILL_JOBTYPES"),
    _s("jobs", "executors", _some_names, LIST, "JOBMILL_EXECUTORS"),
    _s("jobs", "max_local_jobs", _at_least(1), WHOLE, "JOBMILL_MAX_LOCAL_JOBS"),
    _s("jobs", "kill_grace", _number, NUMBER, "JOBMILL_KILL_GRACE"),
    _s("jobs", "poll_interval", _number, NUMBER, "JOBMILL_POLL_INTERVAL"),
    _s("jobs", "engine_lease", _seconds, NUMBER, "JOBMILL_ENGINE_LEASE"),
    _s("jobs", "pass_env", _names, LIST, "JOBMILL_PASS_ENV"),
    _s("jobs", "slow_submit", _seconds, NUMBER, "JOBMILL_SLOW_SUBMIT"),
    _s("security", "admins", _names, LIST, "JOBMILL_ADMINS"),
    _s("security", "anonymous", _anonymous, TEXT, "JOBMILL_ANONYMOUS"),
    _s("security", "token_file", _user_path, TEXT, "JOBMILL_TOKEN_FILE"),
    _s("security", "allowed_hosts", _commas, LIST, "JOBMILL_ALLOWED_HOSTS"),
    _s("security", "allowed_origins", _origins(wildcard=False), LIST, "JOBMILL_ALLOWED_ORIGINS"),
    _s("security", "log_roots", _roots, LIST, "JOBMILL_LOG_ROOTS"),
    _s("security", "data_roots", _roots, LIST, "JOBMILL_DATA_ROOTS"),
    _s("security", "umask", _umask, TEXT, "JOBMILL_UMASK"),
    _s("limits", "max_wait", _seconds, NUMBER, "JOBMILL_MAX_WAIT"),
    _s("limits", "max_upload", _size, SIZE, "JOBMILL_MAX_UPLOAD", to="max_upload_bytes"),
    _s("limits", "max_job_output", _size_or_off, SIZE, "JOBMILL_MAX_JOB_OUTPUT"),
    _s("limits", "min_free", _size_or_off, SIZE, "JOBMILL_MIN_FREE"),
    _s("limits", "max_wait_paths", _at_least(1), WHOLE, "JOBMILL_MAX_WAIT_PATHS"),
    _s("limits", "max_wait_wildcard_dirs", _at_least(0), WHOLE, "JOBMILL_MAX_WAIT_WILDCARD_DIRS"),
    _s("limits", "max_user_waits", _at_least(1), WHOLE, "JOBMILL_MAX_USER_WAITS"),
    _s("limits", "max_user_wildcards", _at_least(0), WHOLE, "JOBMILL_MAX_USER_WILDCARDS"),
    _s("limits", "max_user_wildcard_dirs", _at_least(0), WHOLE, "JOBMILL_MAX_USER_WILDCARD_DIRS"),
    _s("data", "root", _path, TEXT, "JOBMILL_DATA_ROOT", to="data_root"),
    _s("data", "scan_roots", _names, LIST, "JOBMILL_SCAN_ROOTS"),
    _s("data", "scan_interval", _seconds, NUMBER, "JOBMILL_SCAN_INTERVAL"),
    _s("data", "stable_seconds", _seconds_or_zero, NUMBER, "JOBMILL_STABLE_SECONDS"),
    _s("slurm", "bin", _text, TEXT, "JOBMILL_SLURM_BIN", to="slurm_bin"),
    _s("slurm", "partition", _text, TEXT, "JOBMILL_SLURM_PARTITION", to="slurm_partition"),
    _s("slurm", "account", _text, TEXT, "JOBMILL_SLURM_ACCOUNT", to="slurm_account"),
    _s("slurm", "timeout", _seconds, NUMBER, "JOBMILL_SLURM_TIMEOUT", to="slurm_command_timeout"),
    _s("slurm", "lost_after", _seconds, NUMBER, "JOBMILL_SLURM_LOST_AFTER", to="slurm_lost_after"),
    _s("slurm", "array_min", _at_least(0), WHOLE, "JOBMILL_SLURM_ARRAY_MIN", to="slurm_array_min"),
    _s("lsf", "bin", _text, TEXT, "JOBMILL_LSF_BIN", to="lsf_bin"),
    _s("lsf", "queue", _text, TEXT, "JOBMILL_LSF_QUEUE", to="lsf_queue"),
    _s("lsf", "project", _text, TEXT, "JOBMILL_LSF_PROJECT", to="lsf_project"),
    _s("lsf", "timeout", _seconds, NUMBER, "JOBMILL_LSF_TIMEOUT", to="lsf_command_timeout"),
    _s("lsf", "lost_after", _seconds, NUMBER, "JOBMILL_LSF_LOST_AFTER", to="lsf_lost_after"),
    _s("pbs", "bin", _text, TEXT, "JOBMILL_PBS_BIN", to="pbs_bin"),
    _s("pbs", "queue", _text, TEXT, "JOBMILL_PBS_QUEUE", to="pbs_queue"),
    _s("pbs", "account", _text, TEXT, "JOBMILL_PBS_ACCOUNT", to="pbs_account"),
    _s("pbs", "timeout", _seconds, NUMBER, "JOBMILL_PBS_TIMEOUT", to="pbs_command_timeout"),
    _s("pbs", "lost_after", _seconds, NUMBER, "JOBMILL_PBS_LOST_AFTER", to="pbs_lost_after"),
    _s("htcondor", "schedd", _text, TEXT, "JOBMILL_CONDOR_SCHEDD", to="condor_schedd"),
    _s("htcondor", "collector", _text, TEXT, "JOBMILL_CONDOR_COLLECTOR", to="condor_collector"),
    _s("ocps", "basepath", _basepath, TEXT, "API_BASEPATH", to="ocps_basepath"),
    _s("ocps", "protocol", _text, TEXT, "API_PROTOCOL", to="api_protocol"),
    _s("ocps", "domain", _text, TEXT, "API_DOMAIN", to="api_domain"),
    _s("ocps", "cors_origins", _origins(wildcard=True), LIST, "JOBMILL_OCPS_CORS_ORIGINS",
       to="ocps_cors_origins"),
    _s("ocps", "wait_for_dat", _wait_for_dat, WORD, "JOBMILL_OCPS_WAIT_FOR_DAT",
       to="ocps_wait_for_dat"),
    _s("ocps", "monitor_job_id", _flag, BOOL, "JOBMILL_OCPS_MONITOR_JOB_ID",
       to="ocps_monitor_job_id"),
    _s("ocps", "command_type", _text, TEXT, "JOBMILL_OCPS_COMMAND_TYPE",
       to="ocps_command_type"),
)
# fmt: on
"""Every setting of the file and the environment (docs/configuration.md lists them)."""

SECTIONS: dict[str, dict[str, Setting]] = {}
for _setting in SETTINGS:
    SECTIONS.setdefault(_setting.section, {})[_setting.key] = _setting
del _setting


def _getenv(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return value if value not in (None, "") else None


def read_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``field -> value`` for every setting one of its variables sets (an empty one is unset):
    the one place jobmill's configuration is read from the environment."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        for name in setting.env:
            if (raw := _getenv(environ, name)) is not None:
                if (value := setting.read(name, raw)) is not None:
                    values[setting.field] = value
                break
    return values


def read_file(path: Path) -> dict[str, Any]:
    """``field -> value`` for every key of a TOML config file. Unknown sections and keys and
    values of the wrong type stop the start, naming the file, the section and the key."""
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not a valid TOML file: {exc}") from None
    values: dict[str, Any] = {}
    for section, table in document.items():
        if section not in SECTIONS:
            if not isinstance(table, dict):
                place = [s for s, keys in SECTIONS.items() if section in keys]
                hint = f" (it belongs in [{place[0]}])" if place else ""
                raise ConfigError(f"{path}: '{section}' is not in a section{hint}")
            raise ConfigError(
                f"{path}: unknown section [{section}]{_hint(section, SECTIONS)} "
                f"(known: {', '.join(SECTIONS)})"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a section, not a value")
        for key, value in table.items():
            setting = SECTIONS[section].get(key)
            where = f"{path}: [{section}] {key}"
            if setting is None:
                raise ConfigError(
                    f"{path}: [{section}] unknown key '{key}'{_hint(key, SECTIONS[section])} "
                    f"(known: {', '.join(SECTIONS[section])})"
                )
            if (parsed := setting.read(where, _file_value(where, value, setting))) is not None:
                values[setting.field] = parsed
    return values


def _file_value(where: str, value: Any, setting: Setting) -> Raw:
    """A value of the file as a reader takes it, once its TOML type is checked."""
    types, what = setting.accepts
    ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
    if isinstance(value, list):
        ok = ok and all(isinstance(v, str) for v in value)
    if not ok:
        shown = f"'{value}'" if isinstance(value, str) else repr(value)
        kind = {str: "a string", bool: "a boolean", int: "a whole number", float: "a number",
                list: "a list", dict: "a table"}.get(type(value), type(value).__name__)  # fmt: skip
        raise ConfigError(f"{where}: must be {what}, not {kind} ({shown})")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
