"""The jobmill command line (placeholder: serve only)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


@app.command()
def serve(
    host: str = typer.Option(None, envvar="JOBMILL_HOST"),
    port: int = typer.Option(None, envvar="JOBMILL_PORT"),
    home: str = typer.Option(None, envvar="JOBMILL_HOME"),
    jobtypes: list[str] = typer.Option(None, envvar="JOBMILL_JOBTYPES"),
) -> None:
    """Run the jobmill server."""
    import uvicorn

    from jobmill.api.app import create_app
    from jobmill.config import Settings
    from jobmill.factory import build

    settings = Settings.from_env(host=host, port=port, home=home, jobtypes=jobtypes or None)
    jm = build(settings)
    uvicorn.run(create_app(jm), host=settings.host, port=settings.port, log_level="info")


@app.command()
def version() -> None:
    """Print the version."""
    from jobmill import __version__

    print(__version__)
