"""Settings: ``JOBMILL_*`` environment variables (and the OCPS ``API_*`` ones)."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobmill.storage.db import sqlite_url


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
    local_user: str = field(default_factory=lambda: os.environ.get("USER") or "local")
    max_request_bytes: int = 1 << 20
    max_batch_request_bytes: int = 64 << 20
    max_batch_jobs: int = 100_000
    max_wait: float = 600.0
    access_log: bool = False
    slow_submit: float = 5.0
    executors: tuple[str, ...] = ("local",)

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
        if (slow := _env("JOBMILL_SLOW_SUBMIT")) is not None:
            env["slow_submit"] = _seconds("JOBMILL_SLOW_SUBMIT", slow)
        if (access := _env("JOBMILL_ACCESS_LOG")) is not None:
            env["access_log"] = access.lower() in ("1", "true", "yes", "on")
        if (node := _env("JOBMILL_NODE")) is not None:
            env["node"] = node
        if (max_wait := _env("JOBMILL_MAX_WAIT")) is not None:
            env["max_wait"] = _seconds("JOBMILL_MAX_WAIT", max_wait)
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
        """Bound to loopback only: jobmill then runs without login as one local user."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _seconds(name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise SystemExit(f"{name}: '{value}' is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise SystemExit(f"{name}: must be a positive number of seconds")
    return seconds


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name}: '{value}' is not a whole number") from None
