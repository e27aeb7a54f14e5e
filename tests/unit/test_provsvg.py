"""jobmill's own SVG drawing of provenance graphs (no Graphviz): shapes, layers, odd input."""

from __future__ import annotations

import time

from lxml import etree
from prov.model import ProvDocument

from jobmill.service.provsvg import NODE_H, layout, render

SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"


def chain(steps: int, fan: int = 1) -> ProvDocument:
    """``steps`` jobs, each using ``fan`` parameters and the previous job's result."""
    doc = ProvDocument()
    ex = doc.add_namespace("ex", "https://jobs.example.org/api/v1/")
    owner = doc.agent(ex["users/alice"], {"prov:label": "alice"})
    plan = doc.entity(ex["jobtypes/step"], {"prov:type": "prov:Plan"})
    previous = None
    for i in range(steps):
        act = doc.activity(ex[f"jobs/{i}"], other_attributes={"prov:label": f"step {i}"})
        doc.wasAssociatedWith(act, owner, plan)
        for p in range(fan):
            doc.used(act, doc.entity(ex[f"jobs/{i}/parameters/p{p}"], {"prov:value": p}))
        if previous is not None:
            doc.used(act, previous)
        previous = doc.entity(ex[f"jobs/{i}/results/out"], {"prov:label": "out"})
        doc.wasGeneratedBy(previous, act)
    return doc


def test_a_chain_is_drawn_in_layers_older_above_newer() -> None:
    doc = chain(3, fan=2)
    nodes, edges, width, height = layout(doc)
    base = "https://jobs.example.org/api/v1/"
    y = {key.removeprefix(base): node.y for key, node in nodes.items()}
    # Arrows point back in time: what a node points to lies above it.
    for edge in edges:
        assert nodes[edge.tail].y > nodes[edge.head].y, edge
    assert y["jobs/0"] < y["jobs/0/results/out"] < y["jobs/1"] < y["jobs/2/results/out"]
    assert {e.label for e in edges} == {"used", "wasGeneratedBy", "wasAssociatedWith", "hadPlan"}
    # No two nodes of a layer overlap, and everything lies inside the drawing.
    layers: dict[float, list[tuple[float, float]]] = {}
    for node in nodes.values():
        layers.setdefault(node.y, []).append((node.x - node.width / 2, node.x + node.width / 2))
        assert 0 < node.x - node.width / 2 and node.x + node.width / 2 < width
        assert 0 < node.y - NODE_H / 2 and node.y + NODE_H / 2 < height
    for spans in layers.values():
        spans.sort()
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_the_svg_has_one_linked_shape_per_element_and_one_arrow_per_relation() -> None:
    doc = chain(2)
    svg = etree.fromstring(render(doc))
    assert svg.tag == f"{SVG}svg"
    links = svg.findall(f".//{SVG}a")
    hrefs = {a.get(f"{XLINK}href") for a in links}
    assert "https://jobs.example.org/api/v1/jobs/1" in hrefs
    kinds = [a[0].get("class") for a in links]
    assert kinds.count("activity") == 2 and kinds.count("agent") == 1
    assert kinds.count("entity") == 1 + 2 + 2  # the plan, two parameters, two results
    # per job: used, wasAssociatedWith, hadPlan, wasGeneratedBy; then job 1 used job 0's result
    assert len(svg.findall(f".//{SVG}line")) == 2 * 4 + 1
    assert render(doc) == render(doc)  # the same drawing every time


def test_cycles_control_characters_and_long_labels() -> None:
    doc = ProvDocument()
    ex = doc.add_namespace("ex", "https://e.org/")
    a = doc.activity(ex["a"], other_attributes={"prov:label": "bell \x07 and " + "x" * 200})
    b = doc.activity(ex["b"])
    ra, rb = doc.entity(ex["ra"]), doc.entity(ex["rb"])
    doc.wasGeneratedBy(ra, a)
    doc.wasGeneratedBy(rb, b)
    doc.used(a, rb)  # a used b's result and b used a's: a cycle
    doc.used(b, ra)
    doc.used(a, ex["never-declared"])
    svg = etree.fromstring(render(doc))
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    label = next(t for t in texts if t and t.startswith("bell"))
    assert "\x07" not in label and len(label) <= 48 and label.endswith("\u2026")
    assert "ex:never-declared" in texts


def test_a_deep_chain_draws_without_recursion_and_quickly() -> None:
    started = time.perf_counter()
    svg = render(chain(1500))  # deeper than Python's recursion limit
    elapsed = time.perf_counter() - started
    assert etree.fromstring(svg).tag == f"{SVG}svg"
    assert elapsed < 30, elapsed
