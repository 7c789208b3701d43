"""bninfer.ir.Graph -> Graphviz DOT text (render with `dot -Tsvg graph.dot -o graph.svg`).

One box per node, labelled with what it computes: a fused node shows its op chain
(bninfer.profiling.op_chain, e.g. "Affine>Relu>Conv+Add>Relu") and is filled yellow; a
BatchNormalization that is still a node of its own (fused or not) is filled red, so a graph shows at
a glance which BNs survived. Graph inputs and outputs are ellipses. Edges carry run-time values only
(weights and other constants are left out) and are labelled with the value's shape when it is known;
a fused residual input is drawn dashed.

    to_dot(graph, title="optimized")            # one graph
    to_dot_pair(before, after)                  # two clusters side by side in one digraph
"""
from __future__ import annotations

from typing import Sequence

from .ir import Graph
from .profiling import op_chain

FUSED_COLOR = "#ffe8a3"   # a node that carries fused work
BN_COLOR = "#f7b6b6"      # a BatchNormalization still standing as its own kernel
IO_COLOR = "#d6e6f5"      # graph inputs and outputs
MAX_LABEL = 48            # node names longer than this are shortened in labels


def quote(text: str) -> str:
    """A DOT double-quoted string (backslashes, quotes and newlines escaped)."""
    text = str(text).replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace("\r", "").replace("\n", "\\n")
    return f'"{text}"'


def _short(name: str) -> str:
    if len(name) <= MAX_LABEL:
        return name
    return name[:MAX_LABEL // 2 - 1] + "..." + name[-(MAX_LABEL // 2 - 2):]


def _shape(graph: Graph, name: str) -> str:
    v = graph.values.get(name)
    if v is None or v.shape is None:
        return ""
    return "[" + ", ".join(str(d) for d in v.shape) + "]"


def _body(graph: Graph, prefix: str, indent: str = "  ") -> list[str]:
    """Node and edge statements of one graph; every DOT id starts with prefix."""
    lines: list[str] = []
    producer: dict[str, str] = {}
    for k, name in enumerate(graph.inputs):
        nid = f"{prefix}in{k}"
        producer[name] = nid
        label = f"{_short(name)}\n{_shape(graph, name)}".strip()
        lines.append(f"{indent}{nid} [shape=ellipse, style=filled, fillcolor={quote(IO_COLOR)}, "
                     f"label={quote(label)}];")
    edges: list[str] = []
    for k, node in enumerate(graph.nodes):
        nid = f"{prefix}n{k}"
        chain = op_chain(node)
        fused = chain != node.op
        attrs = [f"label={quote(chain + chr(10) + _short(node.name))}",
                 f"tooltip={quote(node.op + ' ' + node.name)}"]
        if node.op == "BatchNormalization":
            attrs.append(f"style=filled, fillcolor={quote(BN_COLOR)}")
        elif fused:
            attrs.append(f"style=filled, fillcolor={quote(FUSED_COLOR)}")
        lines.append(f"{indent}{nid} [{', '.join(attrs)}];")
        extras = node.attrs.get("extras", {}) if isinstance(node.attrs.get("extras"), dict) else {}
        residual = extras.get("residual")
        seen: set[tuple[str, str]] = set()
        for pos, name in enumerate(node.inputs):
            src = producer.get(name) if name else None
            if src is None or (src, name) in seen:
                continue
            seen.add((src, name))
            edge = [f"label={quote(_shape(graph, name))}"]
            if pos == residual:
                edge.append("style=dashed")
            edges.append(f"{indent}{src} -> {nid} [{', '.join(edge)}];")
        for name in node.outputs:
            if name:
                producer[name] = nid
    for k, name in enumerate(graph.outputs):
        nid = f"{prefix}out{k}"
        label = f"{_short(name)}\n{_shape(graph, name)}".strip()
        lines.append(f"{indent}{nid} [shape=ellipse, style=filled, fillcolor={quote(IO_COLOR)}, "
                     f"label={quote(label)}];")
        src = producer.get(name)
        if src is not None:
            edges.append(f"{indent}{src} -> {nid};")
    return lines + edges


_HEADER = ["  rankdir=TB;",
           '  node [shape=box, fontname="Helvetica", fontsize=10];',
           '  edge [fontname="Helvetica", fontsize=8];']


def to_dot(graph: Graph, title: str | None = None) -> str:
    """The graph as a DOT digraph."""
    lines = [f"digraph {quote(graph.name or 'graph')} {{"] + _HEADER
    if title:
        lines += [f"  label={quote(title)};", "  labelloc=t;"]
    lines += _body(graph, "g_")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_dot_pair(before: Graph | None, after: Graph, titles: Sequence[str] = ("before", "after")) -> str:
    """Both graphs in one DOT digraph, each in a labelled cluster (before on the left); before may be
    None (an already optimized .bninfer file has no unoptimized graph), then only after is drawn."""
    lines = [f"digraph {quote(after.name or 'graph')} {{"] + _HEADER
    for k, (graph, title) in enumerate(zip((before, after), titles)):
        if graph is None:
            continue
        lines.append(f"  subgraph cluster_{k} {{")
        lines.append(f"    label={quote(f'{title} ({len(graph.nodes)} nodes)')};")
        lines.append("    labelloc=t; fontname=\"Helvetica\"; fontsize=14;")
        lines += _body(graph, f"c{k}_", "    ")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"
