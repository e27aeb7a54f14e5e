"""Draw a PROV document as an SVG graph in pure Python: no Graphviz, no other program.

A small layered ("Sugiyama") drawing: every element is a node (an activity a blue box, an
entity a yellow oval, an agent an orange house, as ``prov.dot`` styles them), every relation an
arrow from its subject to its object, labelled with its PROV name. Arrows point back in time
(a result to the job that generated it, the job to what it used), so a node is placed one layer
below the lowest node it points to: inputs, owners and job types on top, the last results at
the bottom. Within a layer, nodes are ordered by the mean position of their neighbours (a few
sweeps up and down), which removes most crossings in provenance chains. Cycles (two jobs
naming each other's results) are broken where the walk meets them.

Each node links to its identifier (for jobmill, the element's URL in the native API) and
carries its attributes as a tooltip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lxml import etree
from prov.model import (
    PROV_LABEL,
    ProvActivity,
    ProvAgent,
    ProvAssociation,
    ProvDocument,
    ProvElement,
    ProvRelation,
)

SVG = "http://www.w3.org/2000/svg"
XLINK = "http://www.w3.org/1999/xlink"
NODE_H = 36.0
CHAR_W = 7.0
PAD_X = 14.0
GAP_X = 28.0
GAP_Y = 76.0
MARGIN = 20.0
MAX_LABEL = 48
SWEEPS = 4
FONT = "Helvetica, Arial, sans-serif"
STYLES = {  # kind -> (fill, stroke)
    "activity": ("#9FB1FC", "#0000FF"),
    "entity": ("#FFFC87", "#808080"),
    "agent": ("#FED37F", "#808080"),
    "other": ("#D3D3D3", "#696969"),
}
EDGE_COLORS = {
    "used": "#FF0000",
    "wasGeneratedBy": "#006400",
    "wasAssociatedWith": "#FF8C00",
    "hadPlan": "#FF8C00",
    "wasAttributedTo": "#FF8C00",
    "wasDerivedFrom": "#00008B",
}
RELATION_NAMES = {
    "ProvUsage": "used",
    "ProvGeneration": "wasGeneratedBy",
    "ProvAssociation": "wasAssociatedWith",
    "ProvAttribution": "wasAttributedTo",
    "ProvDerivation": "wasDerivedFrom",
    "ProvCommunication": "wasInformedBy",
    "ProvDelegation": "actedOnBehalfOf",
    "ProvStart": "wasStartedBy",
    "ProvEnd": "wasEndedBy",
    "ProvInvalidation": "wasInvalidatedBy",
    "ProvInfluence": "wasInfluencedBy",
    "ProvSpecialization": "specializationOf",
    "ProvAlternate": "alternateOf",
    "ProvMembership": "hadMember",
    "ProvMention": "mentionOf",
}


@dataclass
class Node:
    key: str
    kind: str
    label: str
    title: str
    width: float
    rank: int = 0
    x: float = 0.0  # centre
    y: float = 0.0  # centre
    out: list[str] = field(default_factory=list)
    into: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Edge:
    tail: str
    head: str
    label: str


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    """``text`` without the characters XML cannot hold (control characters, lone surrogates)."""
    return _NOT_XML.sub("\ufffd", text)


def _short(text: str) -> str:
    text = _xml_text(text)
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "\u2026"


def _node(key: str, kind: str, label: str, title: str) -> Node:
    label = _short(label)
    return Node(key, kind, label, title, max(60.0, len(label) * CHAR_W + 2 * PAD_X))


def _element_node(record: ProvElement) -> Node:
    assert record.identifier is not None  # an element always has one
    key = record.identifier.uri
    kind = (
        "activity"
        if isinstance(record, ProvActivity)
        else "agent"
        if isinstance(record, ProvAgent)
        else "entity"
    )
    labels = sorted(str(v) for v in record.get_attribute(PROV_LABEL))
    lines = [key]
    for name, value in record.formal_attributes:
        if value is not None:
            lines.append(f"{name} = {value}")
    lines += sorted(f"{name} = {value}" for name, value in record.attributes)
    label = labels[0] if labels else str(record.identifier)
    return _node(key, kind, label, _xml_text("\n".join(lines)))


def graph_of(doc: ProvDocument) -> tuple[dict[str, Node], list[Edge]]:
    """The document's elements (in document order) and the relations between them."""
    records = list(doc.flattened().get_records())
    nodes: dict[str, Node] = {}
    for record in records:
        if isinstance(record, ProvElement):
            node = _element_node(record)
            nodes.setdefault(node.key, node)
    edges: list[Edge] = []
    seen: set[Edge] = set()

    def connect(tail: Any, head: Any, label: str) -> None:
        if tail is None or head is None:
            return
        for end in (tail, head):  # an element only named by a relation
            if end.uri not in nodes:
                nodes[end.uri] = _node(end.uri, "other", str(end), _xml_text(end.uri))
        edge = Edge(tail.uri, head.uri, label)
        if edge not in seen and tail.uri != head.uri:
            seen.add(edge)
            edges.append(edge)
            nodes[tail.uri].out.append(head.uri)
            nodes[head.uri].into.append(tail.uri)

    for record in records:
        if not isinstance(record, ProvRelation):
            continue
        formal = record.formal_attributes
        name = RELATION_NAMES.get(type(record).__name__, type(record).__name__)
        if len(formal) >= 2:
            connect(formal[0][1], formal[1][1], name)
        if isinstance(record, ProvAssociation) and len(formal) >= 3:
            connect(formal[0][1], formal[2][1], "hadPlan")
    return nodes, edges


def _rank(nodes: dict[str, Node]) -> None:
    """rank = 1 + the highest rank of the nodes a node points to (0 for none); iterative, so
    long chains need no recursion; an edge back into the current walk (a cycle) is ignored."""
    done: set[str] = set()
    for start in nodes:
        if start in done:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        on_path = {start}
        while stack:
            key, i = stack[-1]
            node = nodes[key]
            if i < len(node.out):
                stack[-1] = (key, i + 1)
                nxt = node.out[i]
                if nxt not in done and nxt not in on_path:
                    stack.append((nxt, 0))
                    on_path.add(nxt)
                continue
            stack.pop()
            on_path.discard(key)
            done.add(key)
            ranks = [nodes[n].rank for n in node.out if n in done and n != key]
            node.rank = 1 + max(ranks) if ranks else 0


def _order(nodes: dict[str, Node]) -> list[list[Node]]:
    """Layers top to bottom, each ordered by the barycentre of its neighbours."""
    layers: list[list[Node]] = [
        [] for _ in range(max((n.rank for n in nodes.values()), default=0) + 1)
    ]
    for node in nodes.values():
        layers[node.rank].append(node)
    where: dict[str, float] = {}

    def place(layer: list[Node]) -> None:
        for i, node in enumerate(layer):
            where[node.key] = (i + 0.5) / len(layer)

    for layer in layers:
        place(layer)
    for sweep in range(SWEEPS):
        down = sweep % 2 == 0
        order = range(1, len(layers)) if down else range(len(layers) - 2, -1, -1)
        for r in order:
            layer = layers[r]

            def barycentre(node: Node, down: bool = down) -> float:
                near = node.out if down else node.into  # the nodes above, or below
                known = [where[k] for k in near if k in where and nodes[k].rank != node.rank]
                return sum(known) / len(known) if known else where[node.key]

            layer.sort(key=barycentre)
            place(layer)
    return layers


def layout(doc: ProvDocument) -> tuple[dict[str, Node], list[Edge], float, float]:
    """Nodes with their positions, the edges, and the drawing's width and height."""
    nodes, edges = graph_of(doc)
    _rank(nodes)
    layers = _order(nodes)
    widths = [sum(n.width for n in layer) + GAP_X * (len(layer) - 1) for layer in layers]
    total = max(widths, default=0.0) + 2 * MARGIN
    for r, layer in enumerate(layers):
        x = (total - widths[r]) / 2
        for node in layer:
            node.x, node.y = x + node.width / 2, MARGIN + NODE_H / 2 + r * (NODE_H + GAP_Y)
            x += node.width + GAP_X
    height = 2 * MARGIN + len(layers) * NODE_H + (len(layers) - 1) * GAP_Y
    return nodes, edges, total, max(height, 2 * MARGIN)


def _border(node: Node, dx: float, dy: float) -> tuple[float, float]:
    """Where the line from the node's centre in direction (dx, dy) leaves its box."""
    if dx == 0 and dy == 0:
        return node.x, node.y
    tx = (node.width / 2) / abs(dx) if dx else float("inf")
    ty = (NODE_H / 2) / abs(dy) if dy else float("inf")
    t = min(tx, ty)
    return node.x + dx * t, node.y + dy * t


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _shape(parent: Any, node: Node) -> None:
    fill, stroke = STYLES[node.kind]
    left, top = node.x - node.width / 2, node.y - NODE_H / 2
    style = {"fill": fill, "stroke": stroke}
    if node.kind == "agent":  # a house: a roof over a box
        roof = NODE_H * 0.3
        points = [
            (left, top + roof),
            (node.x, top),
            (left + node.width, top + roof),
            (left + node.width, top + NODE_H),
            (left, top + NODE_H),
        ]
        text = " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in points)
        etree.SubElement(parent, f"{{{SVG}}}polygon", points=text, **style)
        return
    radius = NODE_H / 2 if node.kind in ("entity", "other") else 0.0
    etree.SubElement(
        parent,
        f"{{{SVG}}}rect",
        x=_fmt(left),
        y=_fmt(top),
        width=_fmt(node.width),
        height=_fmt(NODE_H),
        rx=_fmt(radius),
        **style,
    )


def render(doc: ProvDocument) -> bytes:
    """The document drawn as a standalone SVG file (UTF-8, with an XML declaration)."""
    nodes, edges, width, height = layout(doc)
    svg = etree.Element(
        f"{{{SVG}}}svg",
        nsmap={None: SVG, "xlink": XLINK},
        width=_fmt(width),
        height=_fmt(height),
        viewBox=f"0 0 {_fmt(width)} {_fmt(height)}",
        version="1.1",
    )
    etree.SubElement(svg, f"{{{SVG}}}title").text = "provenance"
    defs = etree.SubElement(svg, f"{{{SVG}}}defs")
    colors = sorted({EDGE_COLORS.get(e.label, "#000000") for e in edges})
    for i, color in enumerate(colors):
        marker = etree.SubElement(
            defs,
            f"{{{SVG}}}marker",
            id=f"arrow{i}",
            viewBox="0 0 10 10",
            refX="10",
            refY="5",
            markerWidth="8",
            markerHeight="8",
            orient="auto",
        )
        etree.SubElement(marker, f"{{{SVG}}}path", d="M0,0 L10,5 L0,10 z", fill=color)
    arrows = {color: f"url(#arrow{i})" for i, color in enumerate(colors)}

    lines = etree.SubElement(svg, f"{{{SVG}}}g", {"class": "edges"})
    for edge in edges:
        tail, head = nodes[edge.tail], nodes[edge.head]
        dx, dy = head.x - tail.x, head.y - tail.y
        x1, y1 = _border(tail, dx, dy)
        x2, y2 = _border(head, -dx, -dy)
        color = EDGE_COLORS.get(edge.label, "#000000")
        group = etree.SubElement(lines, f"{{{SVG}}}g", {"class": "edge"})
        title = _xml_text(f"{edge.tail} {edge.label} {edge.head}")
        etree.SubElement(group, f"{{{SVG}}}title").text = title
        etree.SubElement(
            group,
            f"{{{SVG}}}line",
            x1=_fmt(x1),
            y1=_fmt(y1),
            x2=_fmt(x2),
            y2=_fmt(y2),
            stroke=color,
            attrib={"marker-end": arrows[color]},
        )
        label = etree.SubElement(
            group,
            f"{{{SVG}}}text",
            x=_fmt((x1 + x2) / 2),
            y=_fmt((y1 + y2) / 2),
            fill=color,
            attrib={"font-family": FONT, "font-size": "10", "text-anchor": "middle"},
        )
        label.text = edge.label

    shapes = etree.SubElement(svg, f"{{{SVG}}}g", {"class": "nodes"})
    for node in nodes.values():
        href = _xml_text(node.key)
        link = etree.SubElement(shapes, f"{{{SVG}}}a", {f"{{{XLINK}}}href": href})
        group = etree.SubElement(link, f"{{{SVG}}}g", {"class": node.kind})
        etree.SubElement(group, f"{{{SVG}}}title").text = node.title
        _shape(group, node)
        text = etree.SubElement(
            group,
            f"{{{SVG}}}text",
            x=_fmt(node.x),
            y=_fmt(node.y + 4),
            attrib={"font-family": FONT, "font-size": "12", "text-anchor": "middle"},
        )
        text.text = node.label
    return bytes(etree.tostring(svg, xml_declaration=True, encoding="UTF-8", pretty_print=True))
