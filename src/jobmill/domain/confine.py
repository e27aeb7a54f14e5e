"""Confinement: the paths a user names resolve under roots the administrator configured, and
files jobmill reads or writes on a user's behalf are opened without following symbolic links.

A root is a directory; ``{user}`` in it stands for the caller's user name (``/scratch/{user}``),
and a relative root is taken relative to a base (jobmill's home for log roots). A path is under
a root when its real path (symbolic links followed, ``..`` removed) is the root's real path or
lies below it. See docs/security.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from jobmill.domain.errors import ValidationError

USER = "{user}"


def under(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies below it (both absolute and normalised)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def user_component(user: str) -> bool:
    """Whether ``user`` can stand for ``{user}`` in a path: one plain path component."""
    return bool(user) and user not in (".", "..") and "/" not in user and "\x00" not in user


class Roots:
    """Directories under which the paths users name must lie (``JOBMILL_LOG_ROOTS``...).

    ``setting`` names the environment variable that configures them, for error messages.
    """

    def __init__(self, roots: Sequence[str], base: str | Path, setting: str) -> None:
        self.templates = tuple(roots)
        self.base = os.path.abspath(base)
        self.setting = setting

    def __bool__(self) -> bool:
        return bool(self.templates)

    def for_user(self, user: str) -> list[str]:
        """The real paths of the roots for ``user`` (a root with ``{user}`` is left out when
        the name cannot be a path component)."""
        found: list[str] = []
        for template in self.templates:
            if USER in template:
                if not user_component(user):
                    continue
                template = template.replace(USER, user)
            path = os.path.join(self.base, os.path.expanduser(template))
            real = os.path.realpath(path)
            if real not in found:
                found.append(real)
        return found

    def resolve(self, value: str, user: str, *, field: str) -> str:
        """The real path ``value`` names (relative: under the user's first root), or a
        ``ValidationError`` naming ``field`` when it is outside every root."""
        if not self.templates:
            raise ValidationError(
                f"{field} is not accepted by this server: an administrator enables it by setting "
                f"{self.setting} to the directories it may lead to",
                field=field,
            )
        roots = self.for_user(user)
        if not roots:
            raise ValidationError(
                f"no {self.setting} directory applies to user '{user}'", field=field
            )
        path = value if os.path.isabs(value) else os.path.join(roots[0], value)
        real = os.path.realpath(path)
        if any(under(real, root) for root in roots):
            return real
        raise ValidationError(
            f"'{value}' is outside the directories allowed here ({', '.join(roots)}); an "
            f"administrator can allow more with {self.setting}",
            field=field,
        )

    def contains(self, path: str, user: str) -> bool:
        """Whether the real path of ``path`` (absolute) lies under one of ``user``'s roots."""
        real = os.path.realpath(path)
        return any(under(real, root) for root in self.for_user(user))


def open_nofollow(path: str | Path, flags: int, mode: int = 0o666) -> int:
    """Open the absolute ``path`` refusing a symbolic link in any of its components.

    Each directory is opened relative to the one before (``O_PATH | O_NOFOLLOW``), so a link
    swapped in between a check and the open is refused too: ``OSError`` (``ELOOP`` or
    ``ENOTDIR``). Returns the file descriptor (close-on-exec)."""
    parts = Path(path).parts
    if not parts or parts[0] != "/" or len(parts) < 2:
        raise ValueError(f"not an absolute path to a file: {path}")
    directory = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts[1:-1]:
            step = os.open(
                name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory
            )
            os.close(directory)
            directory = step
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=directory)
    finally:
        os.close(directory)


def makedirs_nofollow(path: str | Path, mode: int = 0o777) -> None:
    """``mkdir -p`` of the absolute ``path`` refusing a symbolic link in any of its components
    (``OSError``: ``ELOOP`` or ``ENOTDIR``), so no directory is made through one."""
    parts = Path(path).parts
    if not parts or parts[0] != "/":
        raise ValueError(f"not an absolute path: {path}")
    directory = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts[1:]:
            try:
                os.mkdir(name, mode, dir_fd=directory)
            except FileExistsError:
                pass
            step = os.open(
                name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory
            )
            os.close(directory)
            directory = step
    finally:
        os.close(directory)


def has_symlink(path: str | Path) -> bool:
    """Whether the absolute ``path`` goes through a symbolic link (or is one)."""
    return os.path.realpath(path) != os.path.normpath(path)
