"""``jobmill types``: list the server's job types, show one (``jobmill types NAME``), and
``jobmill types import FILE``: write a job type from another system's job definition (OPUS's
VOTable files, ``domain/opus_jdl.py``), reporting what could not be mapped."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from typer.core import TyperGroup

from jobmill.cli import render
from jobmill.cli.common import JsonOpt, TokenOpt, UrlOpt, fail, out, print_json
from jobmill.domain.errors import JobTypeFileError, Kind
from jobmill.domain.jobtype_files import load_file
from jobmill.domain.opus_jdl import JdlError, parse


class TypesGroup(TyperGroup):
    """``types`` with sub-commands (``import``), where any other word is a job type's name:
    ``jobmill types sleep`` runs the hidden ``show sleep``."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            show = self.get_command(ctx, "show")
            return "show", show, args
        return super().resolve_command(ctx, args)


types_app = typer.Typer(
    cls=TypesGroup,
    invoke_without_command=True,
    help="List the job types (jobmill types), show one (jobmill types NAME), or import one "
    "(jobmill types import FILE).",
)


@types_app.callback()
def types(
    ctx: typer.Context, json_: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None
) -> None:
    """List the job types (jobmill types), show one job type's parameters (jobmill types NAME),
    or write one from an OPUS job definition (jobmill types import FILE)."""
    if ctx.invoked_subcommand is not None:
        return
    from jobmill.cli.main import connect

    with connect(ctx, url, token) as jm:
        result: Any = jm.jobtypes()
    if json_:
        print_json(result)
    else:
        out.print(render.jobtypes_table(result))


@types_app.command("show", hidden=True)
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The job type.")],
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show one job type's parameters."""
    from jobmill.cli.main import connect

    with connect(ctx, url, token) as jm:
        result: Any = jm.jobtype(name)
    if json_:
        print_json(result)
    else:
        out.print(render.parameters_table(result))


@types_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="An OPUS job definition (VOTable).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory to write NAME.yaml and NAME.sh in.")
    ] = Path("."),
    script: Annotated[
        Path | None,
        typer.Option("--script", help="The job's script, when the definition does not hold it."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Write a job type (NAME.yaml and its script NAME.sh) from an OPUS job definition, check
    that it loads, and list what could not be mapped. Serve it with --jobtypes DIR."""
    try:
        imported = parse(file.read_bytes(), str(file))
    except OSError as exc:
        fail(f"{file}: cannot read: {exc.strerror or exc}", Kind.USAGE)
    except JdlError as exc:
        fail(str(exc), Kind.USAGE)
    body = imported.script
    if script is not None:
        try:
            body = script.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"{script}: cannot read: {exc}", Kind.USAGE)
    elif body is None and (file.parent / f"{imported.name}.sh").is_file():
        body = (file.parent / f"{imported.name}.sh").read_text(encoding="utf-8")
    if body is None:
        fail(
            f"{file} holds no script (PARAM name='script'): give it with --script FILE",
            Kind.USAGE,
        )
    yaml_path = output / f"{imported.name}.yaml"
    script_path = output / f"{imported.name}.sh"
    existing = [str(p) for p in (yaml_path, script_path) if p.exists()]
    if existing and not force:
        fail(f"{' and '.join(existing)} already exist (--force overwrites)", Kind.USAGE)
    header = [f"Imported by 'jobmill types import' from the OPUS job definition {file.name}."]
    header += imported.comments
    header += [f"not mapped: {note}" for note in imported.notes]
    text = "".join(f"# {line}\n" for line in header)
    text += yaml.safe_dump(imported.document, sort_keys=False, allow_unicode=True)
    try:
        output.mkdir(parents=True, exist_ok=True)
        script_path.write_text(body if body.endswith("\n") else body + "\n", encoding="utf-8")
        script_path.chmod(0o755)
        yaml_path.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write in {output}: {exc.strerror or exc}", Kind.USAGE)
    try:
        load_file(yaml_path)
    except JobTypeFileError as exc:
        fail(f"the job type written does not load: {exc}")
    typer.echo(f"wrote {yaml_path} and {script_path} (job type '{imported.name}')")
    if imported.notes:
        typer.echo(f"not mapped ({len(imported.notes)}):")
        for note in imported.notes:
            typer.echo(f"  - {note}")
