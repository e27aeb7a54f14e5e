"""The ``jobmill`` commands that work on this machine's configuration and database: ``serve``,
``token create|list|revoke`` and ``db upgrade``. Only these build jobmill through the factory."""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from jobmill.cli import render
from jobmill.cli.common import HomeOpt, JsonOpt, fail, load_settings, out, print_json

token_app = typer.Typer(no_args_is_help=True, help="User API tokens (works on the database).")
db_app = typer.Typer(no_args_is_help=True, help="The database.")
log = logging.getLogger("jobmill.serve")
GRACEFUL_SHUTDOWN = 5  # seconds open requests get to end on SIGINT/SIGTERM
MAX_WORKERS = 64  # jobmill serve --workers


# -- the server --------------------------------------------------------------------------------


def serve(
    host: Annotated[
        str | None, typer.Option(envvar="JOBMILL_HOST", help="Address to bind (default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(envvar="JOBMILL_PORT", help="Port (default 8080).")
    ] = None,
    home: HomeOpt = None,
    jobtypes: Annotated[
        list[str] | None,
        typer.Option(
            "--jobtypes",
            help="Job type file or directory; repeatable (env: JOBMILL_JOBTYPES).",
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="TOML config file (env: JOBMILL_CONFIG); environment variables override it.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            envvar="JOBMILL_WORKERS",
            help="API worker processes serving HTTP on one socket (1..64); with more than 1, "
            "this process runs the engine and restarts a worker that dies.",
        ),
    ] = 1,
) -> None:
    """Run the jobmill server (API, engine and local executor)."""
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from jobmill.api.app import create_app
    from jobmill.domain.errors import JobTypeFileError
    from jobmill.factory import build

    if not 1 <= workers <= MAX_WORKERS:
        fail(f"--workers (JOBMILL_WORKERS): {workers} is out of range, give 1 to {MAX_WORKERS}", 2)
    settings = load_settings(
        config=config, host=host, port=port, home=home, jobtypes=jobtypes or None
    )
    if workers > 1:
        from jobmill.cli.processes import serve_workers

        raise typer.Exit(serve_workers(settings, workers))
    try:
        jm = build(settings)
    except JobTypeFileError as exc:
        fail(f"job types: {exc}", 2)
    except SQLAlchemyError as exc:
        fail(f"database: {exc}", 2)
    local_token = local_credential(jm, settings, jm.close)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _log_start(jm, settings)
    noted = _note_url(settings)
    signal.signal(signal.SIGHUP, lambda _sig, _frame: _reload_soon(jm))
    app = create_app(jm, warm_up=True)
    if local_token is not None:
        from jobmill.web import signin_link

        link = signin_link(app, _browser_url(settings), local_token)
        typer.echo(f"jobmill: open {link} to sign in to the web pages (the link works once)")
    try:
        # SIGINT and SIGTERM: uvicorn stops serving, and the app's lifespan stops everything
        # jobmill started (engine, watcher, rules); then the database is released.
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level="info",
            access_log=settings.access_log,
            # Requests still open then (a web page's live stream, a long poll) are cut, rather
            # than holding the shutdown for minutes.
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        )
    finally:
        jm.close()
        if noted is not None:
            _forget_url(*noted)


def local_credential(jm: Any, settings: Any, cleanup: Callable[[], None]) -> str | None:
    """The local credential of the user who starts the server, written to its file and
    announced (None when the settings name no file). A file that cannot be written stops the
    start, after ``cleanup``."""
    if settings.token_file is None:
        return None
    try:
        token: str = jm.tokens.ensure_local(settings.local_user, settings.token_file)
    except OSError as exc:
        cleanup()
        fail(f"local credential {settings.token_file}: {exc.strerror or exc}", 2)
    typer.echo(
        f"jobmill: your token is in {settings.token_file} (the CLI and client read it; "
        "others need one from 'jobmill token create')",
        err=True,
    )
    return token


def _browser_url(settings: Any) -> str:
    """Where a browser on this machine reaches the server (the public URL when set)."""
    if settings.public_url:
        return str(settings.public_url)
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def _local_url(settings: Any) -> str:
    """Where a client on this machine reaches the server: its bind address (0.0.0.0 and ::
    as the loopback address), never the public URL, which a local token is not sent to."""
    return _browser_url(settings.with_(public_url=None))


def _log_start(jm: Any, settings: Any) -> None:
    """What a newcomer needs on start: where the data lives, what was loaded, where to go."""
    from sqlalchemy.engine import make_url

    log.info("data: %s (database %s)", settings.home.resolve(), make_url(settings.db_url))
    sources = ", ".join(str(source) for source in settings.jobtypes) or "none given (--jobtypes)"
    names = ", ".join(sorted(jm.jobtypes)) or "none"
    log.info("job types (%d) from %s: %s", len(jm.jobtypes), sources, names)
    if jm.rules is not None:
        rules = jm.rules.rules()
        shown = ", ".join(f"{r.name} ({'on' if r.enabled else 'off'})" for r in rules)
        log.info("rules (%d): %s", len(rules), shown or "none")
    url = _browser_url(settings)
    log.info("open %s (API docs: %s/docs, UWS: %s/uws)", url, url, url)


def _note_url(settings: Any) -> tuple[Any, str] | None:
    """Note where this server listens beside the local credential, for the user's CLI
    (``jobmill.paths.server_file``); None when there is no local credential or it fails."""
    from jobmill.paths import server_file, write_server_url

    if settings.token_file is None:
        return None
    path, url = server_file(settings.token_file), _local_url(settings)
    try:
        write_server_url(path, url)
    except OSError as exc:
        log.warning("cannot note the server's URL in %s: %s", path, exc.strerror or exc)
        return None
    log.info("the CLI finds this server through %s (or set JOBMILL_URL=%s)", path, url)
    return path, url


def _forget_url(path: Any, url: str) -> None:
    """Remove the note at shutdown, unless another server has replaced it since."""
    from jobmill.paths import read_server_url

    if read_server_url(path) == url:
        try:
            path.unlink()
        except OSError:
            pass


def _reload_soon(jm: Any) -> None:
    """SIGHUP: read the job types and rules again, off the signal handler (a broken file is
    logged and changes nothing)."""

    def reload() -> None:
        from jobmill.domain.errors import JobTypeFileError

        try:
            jm.reload()
        except JobTypeFileError as exc:
            log.error("reload refused, the running job types and rules stay: %s", exc)
        except Exception:  # a reload must never take the server down (logged with its traceback)
            log.exception("reload failed; the running job types and rules stay")

    threading.Thread(target=reload, name="jobmill-reload", daemon=True).start()


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", help="Who the token authenticates.")],
    admin: Annotated[bool, typer.Option("--admin", help="May see and steer every job.")] = False,
    note: Annotated[str | None, typer.Option("--note", help="What it is for.")] = None,
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="Lifetime, e.g. 90d, 12h, 30m, 2w (default: none)."),
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Create a user API token and print it (it is shown only this once)."""
    from jobmill.domain.jobs import iso

    lifetime = parse_lifetime(expires) if expires is not None else None
    with _tokens(home) as tokens:
        secret, record = tokens.create(user, admin=admin, note=note, lifetime=lifetime)
    typer.echo(secret)
    kind = "an admin" if admin else "a"
    until = f", valid until {iso(record.expires_at)}" if record.expires_at else ""
    typer.echo(
        f"created {kind} token for {user}{until}; store it now, it is not shown again", err=True
    )


@token_app.command("list")
def token_list(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's tokens.")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Include revoked and expired tokens.")
    ] = False,
    json_: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """The tokens of this database (never their secrets): id, user, admin, state, times."""
    with _tokens(home) as tokens:
        records = tokens.list(user, include_inactive=all_)
    rows = [token_dict(r) for r in records]
    if json_:
        print_json(rows)
    else:
        out.print(render.tokens_table(rows))


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The token's id (token list).")],
    home: HomeOpt = None,
) -> None:
    """Revoke a token: servers refuse it within seconds (their short cache)."""
    from jobmill.domain.errors import NotFound

    with _tokens(home) as tokens:
        try:
            record = tokens.revoke(token_id)
        except NotFound:
            fail(f"no token {token_id} (see 'jobmill token list --all')")
    typer.echo(f"revoked token {record.id} of {record.user}", err=True)


def token_dict(record: Any) -> dict[str, Any]:
    """A stored token (``storage.tokens.TokenRecord``) as JSON: everything but its hash."""
    from jobmill.domain.jobs import iso

    return {
        "id": record.id,
        "user": record.user,
        "admin": record.admin,
        "state": record.state(),
        "created_at": iso(record.created_at),
        "expires_at": iso(record.expires_at),
        "revoked_at": iso(record.revoked_at),
        "last_used_at": iso(record.last_used_at),
        "note": record.note,
    }


_LIFETIME = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_LIFETIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_lifetime(text: str) -> Any:
    """``90d``, ``12h``, ``30m``, ``2w``, ``45s`` as a timedelta; a usage error otherwise."""
    from datetime import timedelta

    match = _LIFETIME.match(text)
    if match is None or int(match.group(1)) == 0:
        fail(f"--expires: '{text}' is not a lifetime such as 90d, 12h, 30m or 2w", 2)
    seconds = int(match.group(1)) * _LIFETIME_UNITS[match.group(2)]
    if seconds > 100 * 365 * 86400:
        fail("--expires: at most 100 years", 2)
    return timedelta(seconds=seconds)


@db_app.command("upgrade")
def db_upgrade(home: HomeOpt = None) -> None:
    """Create or migrate the database schema to the current version."""
    with _tokens(home) as tokens:
        where = tokens.store.engine.url.render_as_string(hide_password=True)
    typer.echo(f"database {where} is up to date")


@contextmanager
def _tokens(home: str | None) -> Iterator[Any]:
    """The token service of this machine's database (created or migrated if need be)."""
    from sqlalchemy.exc import SQLAlchemyError

    from jobmill.factory import open_tokens

    settings = load_settings(home=home)
    try:
        tokens, store = open_tokens(settings)
        try:
            yield tokens
        finally:
            store.read_engine.dispose()
            store.engine.dispose()
    except SQLAlchemyError as exc:
        fail(f"database: {exc}")
