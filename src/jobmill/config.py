"""Settings: ``JOBMILL_*`` environment variables (and the OCPS ``API_*`` ones)."""

from __future__ import annotations

import getpass
import ipaddress
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobmill.paths import default_token_file, sqlite_url


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _list(value: str | None) -> list[str]:
    if not value:
        return []
    parts = value.replace(",", os.pathsep).split(os.pathsep)
    return [p.strip() for p in parts if p.strip()]


@dataclass(frozen=True)
class Settings:
    """Everything jobmill can be configured with; ``from_env`` reads the environment."""

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
    pass_env: tuple[str, ...] = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
    node: str = field(default_factory=socket.gethostname)
    local_user: str = field(default_factory=lambda: _login_name())  # the server's own user
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
    ocps_wait_for_dat: tuple[str, ...] = ()  # OCPS job types that wait for <job_id>.dat; "*": all
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

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        env: dict[str, Any] = {}
        if (home := _env("JOBMILL_HOME")) is not None:
            env["home"] = Path(home)
        if (url := _env("JOBMILL_DATABASE_URL")) is not None:
            env["database_url"] = url
        if types := _list(_env("JOBMILL_JOBTYPES")):
            env["jobtypes"] = tuple(types)
        if (host := _env("JOBMILL_HOST")) is not None:
            env["host"] = host
        port = _env("JOBMILL_PORT") or _env("API_PORT")
        if port is not None:
            env["port"] = _int("JOBMILL_PORT", port)
        if (public := _env("JOBMILL_PUBLIC_URL")) is not None:
            env["public_url"] = public.rstrip("/")
        if (base := _env("API_BASEPATH")) is not None:
            env["ocps_basepath"] = "/" + base.strip("/")
        if (limit := _env("JOBMILL_MAX_LOCAL_JOBS")) is not None:
            env["max_local_jobs"] = max(1, _int("JOBMILL_MAX_LOCAL_JOBS", limit))
        if (grace := _env("JOBMILL_KILL_GRACE")) is not None:
            env["kill_grace"] = float(grace)
        if (interval := _env("JOBMILL_POLL_INTERVAL")) is not None:
            env["poll_interval"] = float(interval)
        if (passed := _env("JOBMILL_PASS_ENV")) is not None:
            env["pass_env"] = tuple(_list(passed))
        if executors := _list(_env("JOBMILL_EXECUTORS")):
            env["executors"] = tuple(executors)
        for name, var, seconds in _BATCH_SETTINGS:
            if (value := _env(var)) is not None:
                env[name] = _seconds(var, value) if seconds else value
        if (schedd := _env("JOBMILL_CONDOR_SCHEDD")) is not None:
            env["condor_schedd"] = schedd
        if (collector := _env("JOBMILL_CONDOR_COLLECTOR")) is not None:
            env["condor_collector"] = collector
        if (array_min := _env("JOBMILL_SLURM_ARRAY_MIN")) is not None:
            env["slurm_array_min"] = max(0, _int("JOBMILL_SLURM_ARRAY_MIN", array_min))
        if (slow := _env("JOBMILL_SLOW_SUBMIT")) is not None:
            env["slow_submit"] = _seconds("JOBMILL_SLOW_SUBMIT", slow)
        if (access := _env("JOBMILL_ACCESS_LOG")) is not None:
            env["access_log"] = access.lower() in ("1", "true", "yes", "on")
        if (node := _env("JOBMILL_NODE")) is not None:
            env["node"] = node
        if (max_wait := _env("JOBMILL_MAX_WAIT")) is not None:
            env["max_wait"] = _seconds("JOBMILL_MAX_WAIT", max_wait)
        if (upload := _env("JOBMILL_MAX_UPLOAD")) is not None:
            env["max_upload_bytes"] = _size("JOBMILL_MAX_UPLOAD", upload)
        env.update(_data_settings())
        env.update(_identity_settings())
        env.update(_browser_settings())
        env.update(_limit_settings())
        env.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(env.get("home"), str):
            env["home"] = Path(env["home"])
        if isinstance(env.get("jobtypes"), list):
            env["jobtypes"] = tuple(env["jobtypes"])
        return cls(**env)

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
        protocol = _env("API_PROTOCOL", "http")
        domain = _env("API_DOMAIN")
        if domain is None:
            domain = self.host if self.host not in ("0.0.0.0", "::") else socket.getfqdn()
        if ":" in domain and not domain.startswith("["):
            domain = f"[{domain}]"
        return f"{protocol}://{domain}:{self.port}"

    @property
    def loopback(self) -> bool:
        """Bound to loopback only (this grants nobody anything: see docs/security.md)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _data_settings() -> dict[str, Any]:
    """Waiting for data: ``JOBMILL_DATA_ROOT``, ``JOBMILL_SCAN_ROOTS``, ``JOBMILL_SCAN_INTERVAL``,
    ``JOBMILL_STABLE_SECONDS`` and ``JOBMILL_OCPS_WAIT_FOR_DAT`` (see docs/triggers.md)."""
    env: dict[str, Any] = {}
    if (root := _env("JOBMILL_DATA_ROOT")) is not None:
        env["data_root"] = Path(root)
    if (roots := _env("JOBMILL_SCAN_ROOTS")) is not None:
        env["scan_roots"] = tuple(_list(roots))
    if (interval := _env("JOBMILL_SCAN_INTERVAL")) is not None:
        env["scan_interval"] = _seconds("JOBMILL_SCAN_INTERVAL", interval)
    if (stable := _env("JOBMILL_STABLE_SECONDS")) is not None:
        env["stable_seconds"] = 0.0 if _zero(stable) else _seconds("JOBMILL_STABLE_SECONDS", stable)
    if (dat := _env("JOBMILL_OCPS_WAIT_FOR_DAT")) is not None:
        word = dat.strip().lower()
        if word in ("0", "off", "false", "no", "none"):
            env["ocps_wait_for_dat"] = ()
        elif word in ("1", "on", "true", "yes", "all", "*"):
            env["ocps_wait_for_dat"] = ("*",)
        else:
            env["ocps_wait_for_dat"] = tuple(_list(dat))
    return env


def _identity_settings() -> dict[str, Any]:
    """Who is calling: ``JOBMILL_ADMINS``, ``JOBMILL_ANONYMOUS`` (``none`` or ``read``) and
    ``JOBMILL_TOKEN_FILE`` (see docs/security.md)."""
    env: dict[str, Any] = {}
    if (admins := _env("JOBMILL_ADMINS")) is not None:
        env["admins"] = tuple(_list(admins))
    if (anonymous := _env("JOBMILL_ANONYMOUS")) is not None:
        word = anonymous.strip().lower()
        if word not in ("none", "read"):
            raise SystemExit(f"JOBMILL_ANONYMOUS: '{anonymous}' is not 'none' or 'read'")
        env["anonymous"] = word
    return env


def _browser_settings() -> dict[str, Any]:
    """Host and Origin checks, OCPS CORS: ``JOBMILL_ALLOWED_HOSTS``, ``JOBMILL_ALLOWED_ORIGINS``
    and ``JOBMILL_OCPS_CORS_ORIGINS``, comma lists (see docs/security.md)."""

    def commas(value: str) -> tuple[str, ...]:  # not _list: origins and hosts contain ':'
        return tuple(p.strip() for p in value.replace(",", " ").split() if p.strip())

    def origins(name: str, value: str, wildcard: bool) -> tuple[str, ...]:
        found = []
        for entry in commas(value):
            if entry == "*" and wildcard:
                found.append(entry)
                continue
            scheme, sep, rest = entry.rstrip("/").partition("://")
            if scheme.lower() not in ("http", "https") or not sep or not rest:
                raise SystemExit(f"{name}: '{entry}' is not an origin (scheme://host[:port])")
            if any(c in rest for c in "/?#@"):
                raise SystemExit(f"{name}: '{entry}' is an origin without a path")
            found.append(entry.rstrip("/").lower())
        return tuple(found)

    env: dict[str, Any] = {}
    if (hosts := _env("JOBMILL_ALLOWED_HOSTS")) is not None:
        env["allowed_hosts"] = commas(hosts)
    if (allowed := _env("JOBMILL_ALLOWED_ORIGINS")) is not None:
        env["allowed_origins"] = origins("JOBMILL_ALLOWED_ORIGINS", allowed, wildcard=False)
    if (cors := _env("JOBMILL_OCPS_CORS_ORIGINS")) is not None:
        env["ocps_cors_origins"] = origins("JOBMILL_OCPS_CORS_ORIGINS", cors, wildcard=True)
    return env


def _limit_settings() -> dict[str, Any]:
    """Path roots, umask, output caps, data-wait caps, free space: ``JOBMILL_LOG_ROOTS``,
    ``JOBMILL_DATA_ROOTS``, ``JOBMILL_UMASK``, ``JOBMILL_MAX_JOB_OUTPUT``, ``JOBMILL_MIN_FREE``,
    ``JOBMILL_MAX_WAIT_PATHS``, ``JOBMILL_MAX_WAIT_WILDCARD_DIRS``, ``JOBMILL_MAX_USER_WAITS``,
    ``JOBMILL_MAX_USER_WILDCARDS`` and ``JOBMILL_MAX_USER_WILDCARD_DIRS`` (docs/security.md)."""
    off = ("0", "none", "off", "no", "false")
    env: dict[str, Any] = {}
    for name, var in (("log_roots", "JOBMILL_LOG_ROOTS"), ("data_roots", "JOBMILL_DATA_ROOTS")):
        if (roots := _env(var)) is not None:
            env[name] = () if roots.strip().lower() in off else tuple(_list(roots))
    if (umask := _env("JOBMILL_UMASK")) is not None:
        try:
            mask = int(umask.strip().lower().removeprefix("0o"), 8)
        except ValueError:
            raise SystemExit(f"JOBMILL_UMASK: '{umask}' is not an octal mask like 077") from None
        if not 0 <= mask <= 0o777:
            raise SystemExit("JOBMILL_UMASK: must be between 000 and 777")
        env["umask"] = mask
    sizes = (("max_job_output", "JOBMILL_MAX_JOB_OUTPUT"), ("min_free", "JOBMILL_MIN_FREE"))
    for name, var in sizes:
        if (size := _env(var)) is not None:
            env[name] = 0 if size.strip().lower() in off else _size(var, size)
    for name, var, least in (
        ("max_wait_paths", "JOBMILL_MAX_WAIT_PATHS", 1),
        ("max_wait_wildcard_dirs", "JOBMILL_MAX_WAIT_WILDCARD_DIRS", 0),
        ("max_user_waits", "JOBMILL_MAX_USER_WAITS", 1),
        ("max_user_wildcards", "JOBMILL_MAX_USER_WILDCARDS", 0),
        ("max_user_wildcard_dirs", "JOBMILL_MAX_USER_WILDCARD_DIRS", 0),
    ):
        if (count := _env(var)) is not None:
            env[name] = max(least, _int(var, count))
    return env


def _login_name() -> str:
    """The account running jobmill: ``$USER``, else the password database's name for the uid."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "local"


def _zero(value: str) -> bool:
    try:
        return float(value) == 0
    except ValueError:
        return False


_BATCH_SETTINGS = (  # (setting, environment variable, is a number of seconds)
    ("slurm_bin", "JOBMILL_SLURM_BIN", False),
    ("slurm_partition", "JOBMILL_SLURM_PARTITION", False),
    ("slurm_account", "JOBMILL_SLURM_ACCOUNT", False),
    ("slurm_command_timeout", "JOBMILL_SLURM_TIMEOUT", True),
    ("slurm_lost_after", "JOBMILL_SLURM_LOST_AFTER", True),
    ("lsf_bin", "JOBMILL_LSF_BIN", False),
    ("lsf_queue", "JOBMILL_LSF_QUEUE", False),
    ("lsf_project", "JOBMILL_LSF_PROJECT", False),
    ("lsf_command_timeout", "JOBMILL_LSF_TIMEOUT", True),
    ("lsf_lost_after", "JOBMILL_LSF_LOST_AFTER", True),
    ("pbs_bin", "JOBMILL_PBS_BIN", False),
    ("pbs_queue", "JOBMILL_PBS_QUEUE", False),
    ("pbs_account", "JOBMILL_PBS_ACCOUNT", False),
    ("pbs_command_timeout", "JOBMILL_PBS_TIMEOUT", True),
    ("pbs_lost_after", "JOBMILL_PBS_LOST_AFTER", True),
)


def _seconds(name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise SystemExit(f"{name}: '{value}' is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise SystemExit(f"{name}: must be a positive number of seconds")
    return seconds


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(name: str, value: str) -> int:
    """A number of bytes, optionally with a binary unit: ``1048576``, ``512K``, ``100M``, ``2G``."""
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    try:
        size = int(text.removesuffix(unit)) * _UNITS[unit] if unit else int(text)
    except ValueError:
        raise SystemExit(
            f"{name}: '{value}' is not a size (bytes, or e.g. 512K, 100M, 2G)"
        ) from None
    if size <= 0:
        raise SystemExit(f"{name}: must be a positive size")
    return size


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name}: '{value}' is not a whole number") from None
