"""Workflows in the CLI: ``jobmill link CHILD PARENT...``, ``jobmill unlink CHILD PARENT`` and
``jobmill graph [ID] [--format text|dot|svg]`` (brownthrower's ``job link``, ``job unlink`` and
``job graph``; docs/workflows.md). ``jobmill submit --after ID`` is in ``cli/main.py``.

``register(app, connect)`` adds the commands. Ids may be short prefixes (``cli/ids.py``). The
SVG drawing is pure Python (no Graphviz): jobs in layers, each one below the jobs it runs after
and the job that created it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from html import escape
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jobmill.cli.common import JsonOpt, TokenOpt, UrlOpt, fail, print_json
from jobmill.cli.ids import resolve
from jobmill.client import Client

if TYPE_CHECKING:  # networkx and pydot are imported by the commands that draw (not by a server)
    import networkx as nx

Connect = Callable[[typer.Context, str | None, str | None], AbstractContextManager[Client]]

AfterOpt = Annotated[
    list[str] | None,
    typer.Option("--after", metavar="ID", help="Run after this job has completed (repeatable)."),
]
FORMATS = ("text", "dot", "svg")
PHASE_COLOURS = {
    "COMPLETED": "#c8e6c9",
    "ERROR": "#ffcdd2",
    "ABORTED": "#ffe0b2",
    "EXECUTING": "#bbdefb",
    "QUEUED": "#fff9c4",
    "PENDING": "#eeeeee",
}


def short(job_id: str) -> str:
    return job_id[:8]


def to_networkx(graph: dict[str, Any]) -> nx.DiGraph:
    """The graph of ``GET /api/v1/graph`` as a networkx graph: a node per job (type, phase,
    reason), an edge ``kind="after"`` from a job to each job that runs after it and
    ``kind="subjob"`` from a job to each of its sub-jobs."""
    import networkx as nx

    g: nx.DiGraph = nx.DiGraph()
    for job in graph["jobs"]:
        g.add_node(job["id"], type=job["type"], phase=job["phase"], reason=job["reason"])
    for parent, child in graph["after"]:
        g.add_edge(parent, child, kind="after")
    for parent, child in graph["subjobs"]:
        g.add_edge(parent, child, kind="subjob")
    return g


def order(g: nx.DiGraph) -> list[str]:
    """Jobs with every job before the jobs that run after it (ties: as listed)."""
    import networkx as nx

    try:
        return list(nx.lexicographical_topological_sort(g, key=list(g.nodes).index))
    except nx.NetworkXUnfeasible:  # pragma: no cover - the server refuses cycles
        return list(g.nodes)


def as_text(g: nx.DiGraph) -> str:
    """One line per job: short id, type, phase (reason), what it runs after, its sub-jobs."""
    lines = []
    for node in order(g):
        data = g.nodes[node]
        state = data["phase"] + (f" ({data['reason']})" if data.get("reason") else "")
        after = [short(p) for p, _c, k in g.in_edges(node, data="kind") if k == "after"]
        parent = [short(p) for p, _c, k in g.in_edges(node, data="kind") if k == "subjob"]
        line = f"{short(node)}  {data['type']:<16} {state}"
        if parent:
            line += f"  sub-job of {parent[0]}"
        if after:
            line += "  after " + ", ".join(after)
        lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


def as_dot(g: nx.DiGraph) -> str:
    """The graph in Graphviz DOT (written by pydot): jobs as boxes coloured by phase,
    dependencies as arrows, sub-jobs as dashed arrows."""
    import pydot

    dot = pydot.Dot("jobs", graph_type="digraph", rankdir="TB")
    for node in order(g):
        data = g.nodes[node]
        label = f"{short(node)}\\n{data['type']}\\n{data['phase']}"
        dot.add_node(
            pydot.Node(
                f'"{node}"',
                label=f'"{label}"',
                shape="box",
                style="filled",
                fillcolor=f'"{PHASE_COLOURS.get(data["phase"], "#ffffff")}"',
            )
        )
    for parent, child, kind in g.edges(data="kind"):
        style = "dashed" if kind == "subjob" else "solid"
        dot.add_edge(pydot.Edge(f'"{parent}"', f'"{child}"', style=style))
    return str(dot.to_string())


def as_svg(g: nx.DiGraph) -> str:
    """A pure-Python SVG drawing: each job one layer below the deepest job it depends on (or
    was created by), layers left to right in listed order, arrows between box edges."""
    layer: dict[str, int] = {}
    for node in order(g):
        layer[node] = max((layer[p] + 1 for p in g.predecessors(node)), default=0)
    rows: dict[int, list[str]] = {}
    for node in order(g):
        rows.setdefault(layer[node], []).append(node)
    width, height, gap_x, gap_y = 150, 54, 30, 50
    pos: dict[str, tuple[int, int]] = {}
    for depth, nodes in rows.items():
        for i, node in enumerate(nodes):
            pos[node] = (20 + i * (width + gap_x), 20 + depth * (height + gap_y))
    total_w = max((x for x, _y in pos.values()), default=0) + width + 20
    total_h = max((y for _x, y in pos.values()), default=0) + height + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" '
        f'viewBox="0 0 {total_w} {total_h}" font-family="sans-serif" font-size="12">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>'
        "</defs>",
    ]
    for parent, child, kind in g.edges(data="kind"):
        (x1, y1), (x2, y2) = pos[parent], pos[child]
        dash = ' stroke-dasharray="5,4"' if kind == "subjob" else ""
        parts.append(
            f'<line x1="{x1 + width // 2}" y1="{y1 + height}" x2="{x2 + width // 2}" '
            f'y2="{y2}" stroke="#555"{dash} marker-end="url(#arrow)"/>'
        )
    for node, (x, y) in pos.items():
        data = g.nodes[node]
        fill = PHASE_COLOURS.get(data["phase"], "#ffffff")
        parts.append(
            f'<g><title>{escape(node)}</title><rect x="{x}" y="{y}" width="{width}" '
            f'height="{height}" rx="6" fill="{fill}" stroke="#333"/>'
        )
        for i, text in enumerate((short(node), data["type"], data["phase"])):
            parts.append(
                f'<text x="{x + width // 2}" y="{y + 16 + i * 15}" '
                f'text-anchor="middle">{escape(str(text))}</text>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def register(app: typer.Typer, connect: Connect) -> None:
    """Add ``link``, ``unlink`` and ``graph`` to ``app``."""

    @app.command("link")
    def link(
        ctx: typer.Context,
        child: Annotated[str, typer.Argument(metavar="CHILD", help="The job that waits.")],
        parents: Annotated[
            list[str], typer.Argument(metavar="PARENT...", help="Jobs it runs after.")
        ],
        json_: JsonOpt = False,
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """CHILD (PENDING, or waiting for upstream jobs) also runs after PARENT... (note the
        order: brownthrower's 'job link' takes the parent first)."""
        with connect(ctx, url, token) as jm:
            job = jm.link(resolve(jm, child), [resolve(jm, p) for p in parents])
        if json_:
            print_json(job)
        else:
            typer.echo(f"{job['id']} runs after: {', '.join(job['after']) or 'nothing'}")

    @app.command("unlink")
    def unlink(
        ctx: typer.Context,
        child: Annotated[str, typer.Argument(metavar="CHILD", help="The job that waits.")],
        parent: Annotated[str, typer.Argument(metavar="PARENT", help="A job it runs after.")],
        json_: JsonOpt = False,
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """CHILD no longer runs after PARENT (it starts if it waited for nothing else)."""
        with connect(ctx, url, token) as jm:
            job = jm.unlink(resolve(jm, child), resolve(jm, parent))
        if json_:
            print_json(job)
        else:
            typer.echo(f"{job['id']} runs after: {', '.join(job['after']) or 'nothing'}")

    @app.command("graph")
    def graph(
        ctx: typer.Context,
        job_id: Annotated[
            str | None,
            typer.Argument(metavar="[ID]", help="A job: the jobs connected to it (default: all)."),
        ] = None,
        fmt: Annotated[
            str, typer.Option("--format", help="text, dot (Graphviz) or svg (no Graphviz needed).")
        ] = "text",
        json_: JsonOpt = False,
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """Jobs connected by dependencies and sub-jobs (brownthrower's 'job graph')."""
        if fmt not in FORMATS:
            fail(f"--format must be one of: {', '.join(FORMATS)}", 2)
        with connect(ctx, url, token) as jm:
            data = jm.graph(resolve(jm, job_id) if job_id else None)
        if json_:
            print_json(data)
            return
        g = to_networkx(data)
        rendered = {"text": as_text, "dot": as_dot, "svg": as_svg}[fmt](g)
        typer.echo(rendered, nl=False)
        if data.get("truncated"):
            typer.echo("(truncated)", err=True)
