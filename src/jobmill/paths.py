"""Where a user's own jobmill files live (standard library only: the client imports it)."""

from __future__ import annotations

import os
from pathlib import Path

TOKEN_FILE_ENV = "JOBMILL_TOKEN_FILE"  # noqa: S105 - the variable's name, not a secret


def default_token_file() -> Path:
    """The user's local credential: ``$JOBMILL_TOKEN_FILE``, else
    ``$XDG_CONFIG_HOME/jobmill/token`` (``~/.config/jobmill/token``)."""
    explicit = os.environ.get(TOKEN_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "jobmill" / "token"


def read_token_file(path: Path) -> str | None:
    """The token in ``path``, or None when there is none. A file that others can read or
    write, or that belongs to another user, is not trusted (it may have been planted or seen)."""
    try:
        info = path.stat()
    except OSError:
        return None
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def server_file(token_file: Path | None = None) -> Path:
    """Where ``jobmill serve`` notes the URL it listens on for its user's CLI: beside the local
    credential, ``<credential>.url`` (``~/.config/jobmill/token.url``)."""
    token_file = token_file or default_token_file()
    return token_file.with_name(token_file.name + ".url")


def write_server_url(path: Path, url: str) -> None:
    """Write ``url`` to ``path``, readable by its owner only (0600), replacing it whole."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    part = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(url + "\n")
    os.replace(part, path)


def read_server_url(path: Path) -> str | None:
    """The http(s) URL in ``path``, trusted as the token file is (``read_token_file``)."""
    url = read_token_file(path)
    if url is None or not url.startswith(("http://", "https://")) or len(url) > 2048:
        return None
    return url.rstrip("/")


def sqlite_url(home: Path) -> str:
    """The embedded database of a jobmill home."""
    return f"sqlite:///{home / 'jobmill.db'}"
