"""What every ``jobmill`` command shares: the console, common options, and how it fails."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from jobmill.domain.errors import Kind, exit_code

if TYPE_CHECKING:
    from jobmill.config import Settings

# Piped output is not cut to 80 columns: tables stay one row per job for grep and friends.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
TAIL_BYTES = 1 << 20

UrlOpt = Annotated[
    str | None, typer.Option("--url", help="jobmill URL (default: the global --url, JOBMILL_URL).")
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="API token (default: the global --token, JOBMILL_API_TOKEN)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
HomeOpt = Annotated[
    str | None, typer.Option("--home", envvar="JOBMILL_HOME", help="jobmill home directory.")
]


def fail(message: str, code: int | Kind = 1) -> NoReturn:
    """One ``error:`` line on stderr, then exit with ``code``: a number, or the exit code of an
    error kind (``domain.errors.KINDS``: 2 for a usage error, 1 for the others)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(exit_code(code) if isinstance(code, Kind) else code)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def load_settings(**options: Any) -> Settings:
    """The server's settings: the config file, the environment, then ``options`` (None: not
    given). A bad setting is one ``error:`` line naming it, and exit code 2."""
    from jobmill.config import ConfigError, Settings

    try:
        return Settings.from_env(**options)
    except ConfigError as exc:
        fail(str(exc), Kind.USAGE)
