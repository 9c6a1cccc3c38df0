"""The dependency graph of a checked model (networkx.DiGraph): a node per definition, an edge per read.

Node ids are ``"<kind>:<name>"`` (``stream:q``, ``state:S``); a state's updates are nodes
``update:S#1``, ``update:S#2``... in step order, and the state node stands for its value at the end
of a step. Each node has attributes ``kind``, ``name``, ``line`` and ``hoisted`` (True when the value
does not depend on any state, so it is computed for all tokens at once, outside the recurrence).
"""

from __future__ import annotations

import networkx as nx

from seqdsl import ir
from seqdsl.codegen.ops import LAYER_INPUT
from seqdsl.typecheck import Checked


def build_graph(c: Checked) -> nx.DiGraph:
    """Dependency graph of the model. Edges point from what is read to what reads it."""
    g = nx.DiGraph()
    m = c.model
    current: dict[str, str] = {}   # name -> node id that holds its latest value

    def add(node: str, kind: str, name: str, span, reads: list[str]) -> None:
        g.add_node(node, kind=kind, name=name, line=span.line if span else None)
        for r in reads:
            if r in current:
                g.add_edge(current[r], node)

    def reads(e: ir.Expr | None) -> list[str]:
        return [] if e is None else list(dict.fromkeys(n.id for n in ir.names_in(e)))

    for h in m.hparams:
        add(f"hparam:{h.name}", "hparam", h.name, h.span, [])
        current[h.name] = f"hparam:{h.name}"
    for d in m.dims:
        add(f"dim:{d.name}", "dim", d.name, d.span, reads(d.value))
        current[d.name] = f"dim:{d.name}"
    if LAYER_INPUT in c.types:
        add(f"input:{LAYER_INPUT}", "input", LAYER_INPUT, None, [])
        current[LAYER_INPUT] = f"input:{LAYER_INPUT}"
    for p in m.params:
        add(f"param:{p.name}", "param", p.name, p.span, reads(p.init))
        current[p.name] = f"param:{p.name}"
    for s in m.streams:
        add(f"stream:{s.name}", "stream", s.name, s.span, reads(s.value))
        current[s.name] = f"stream:{s.name}"
    if m.cell is not None:
        count: dict[str, int] = {}
        for st in m.cell.body:
            if isinstance(st, ir.StateDecl):
                node = f"state:{st.name}#0"
                add(node, "state_init", st.name, st.span, reads(st.init))
                current[st.name] = node
            elif isinstance(st, ir.CellArg):
                add(f"arg:{st.name}", "arg", st.name, st.span, reads(st.default))
                current[st.name] = f"arg:{st.name}"
            elif isinstance(st, ir.Update):
                count[st.target] = count.get(st.target, 0) + 1
                node = f"update:{st.target}#{count[st.target]}"
                add(node, "update", st.target, st.span, reads(st.value))
                current[st.target] = node
            else:
                add(f"local:{st.name}", "local", st.name, st.span, reads(st.value))
                current[st.name] = f"local:{st.name}"
        # the state at the end of a step feeds the next step: close the loop
        for st in m.cell.states:
            node = f"state:{st.name}"
            g.add_node(node, kind="state", name=st.name, line=st.span.line if st.span else None)
            g.add_edge(current[st.name], node)
            g.add_edge(node, f"state:{st.name}#0")
    for o in m.outs:
        add(f"out:{o.name}", "out", o.name, o.span, reads(o.value))
        current[o.name] = f"out:{o.name}"
    recurrent = set()
    for st in (m.cell.states if m.cell else ()):
        recurrent |= nx.descendants(g, f"state:{st.name}") | {f"state:{st.name}"}
    for node, data in g.nodes(data=True):
        data["hoisted"] = node not in recurrent and data["kind"] not in ("out",)
    for node in g.nodes:
        if g.nodes[node]["kind"] == "out":
            g.nodes[node]["hoisted"] = False
    return g


def to_json(g: nx.DiGraph) -> dict:
    """A JSON-ready dict: {"nodes": [{id, kind, name, line, hoisted}], "edges": [[src, dst]]}."""
    return {"nodes": [{"id": n, **g.nodes[n]} for n in g.nodes],
            "edges": [[a, b] for a, b in g.edges]}


def to_dot(g: nx.DiGraph, title: str) -> str:
    """Graphviz DOT text; hoisted (token-parallel) nodes are boxes, the recurrent core is red."""
    lines = [f'digraph "{title}" {{', "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for n, d in g.nodes(data=True):
        shape = "box" if d["hoisted"] else "ellipse"
        color = "black" if d["hoisted"] else "red"
        lines.append(f'  "{n}" [label="{n}", shape={shape}, color={color}];')
    for a, b in g.edges:
        lines.append(f'  "{a}" -> "{b}";')
    lines.append("}")
    return "\n".join(lines) + "\n"
