"""The server's own user's local credential: a token in a file only that user can read.

``jobmill serve`` makes sure the user who runs it holds an administrator token of this
database, written to ``~/.config/jobmill/token`` (mode 0600; ``JOBMILL_TOKEN_FILE``). The CLI
and the Python client read it when they talk to a server on this machine, so the person who
started the server needs no set-up, while another account on the same host has no such file
and is anonymous. See docs/security.md.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from jobmill.paths import read_token_file
from jobmill.storage.tokens import TokenStore

LOCAL_NOTE = "local credential (jobmill serve)"


def ensure_local_token(tokens: TokenStore, user: str, path: Path) -> str:
    """The local credential in ``path``, made an active admin token of ``user`` in this
    database. A missing, unreadable or revoked one is replaced by a new token."""
    secret = read_token_file(path)
    if secret is not None:
        record = tokens.lookup(secret)
        if record is None:
            tokens.add(user, secret, admin=True, note=LOCAL_NOTE)
            return secret
        if record.state() == "active" and record.user == user and record.admin:
            return secret
    secret = secrets.token_urlsafe(32)
    write_token_file(path, secret)
    tokens.add(user, secret, admin=True, note=LOCAL_NOTE)
    return secret


def write_token_file(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` atomically, readable by its owner only (0600, in a 0700
    directory it creates)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secret + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
