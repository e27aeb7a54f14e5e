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


def sqlite_url(home: Path) -> str:
    """The embedded database of a jobmill home."""
    return f"sqlite:///{home / 'jobmill.db'}"
