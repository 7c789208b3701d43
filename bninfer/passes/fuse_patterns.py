"""Recognise the subgraphs exporters emit for one activation and replace each by that activation:

    x * Sigmoid(x)                                   -> Swish (SiLU)
    x * HardSigmoid(x; α=1/6, β=1/2)                 -> HardSwish
    x * Tanh(Softplus(x))                            -> Mish
    0.5 * x * (1 + Erf(x / √2))                      -> Gelu
    0.5 * x * (1 + Tanh(√(2/π) * (x + 0.044715 x³)))  -> Gelu(approximate="tanh")

Guard for every pattern: each inner value is read only inside the pattern, constants have the
exact values of the formula (to float32 precision).
"""
from __future__ import annotations

import math

from ..ir import Graph, Node
from . import match
from .report import Report

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def run(g: Graph, report: Report) -> None:
    changed = True
    while changed:
        changed = False
        for node in list(g.nodes):
            if node not in g.nodes:
                continue
            for matcher in (_gate, _gelu):
                found = matcher(g, node)
                if found:
                    x, last, removed, op, attrs = found
                    _replace(g, x, last, removed, op, attrs)
                    report.fusions.append(f"{' + '.join(n.op for n in removed)} -> {op} "
                                          f"(at {last.name!r})")
                    changed = True
                    break


def _replace(g: Graph, x: str, last: Node, removed: list[Node], op: str, attrs: dict) -> None:
    new = Node(op, g.fresh_name(f"{last.name}_{op}"), [x], [last.outputs[0]], attrs)
    g.nodes.insert(g.nodes.index(last), new)
    for n in removed:
        for o in n.outputs:
            if o != last.outputs[0]:
                g.values.pop(o, None)
        g.remove_node(n)


def _gate(g: Graph, mul: Node):
    """x * f(x) with f = Sigmoid, HardSigmoid(1/6, 1/2) or Tanh(Softplus)."""
    if mul.op != "Mul" or len(mul.inputs) != 2:
        return None
    for gate_name in mul.inputs:
        x = match.other_input(mul, gate_name)
        gate = g.producer(gate_name)
        if gate is None or match.only_consumer(g, gate_name) is not mul:
            continue
        if gate.op == "Tanh":
            sp = match.producer_of(g, gate.inputs[0], "Softplus")
            if sp is not None and sp.inputs[0] == x and match.only_consumer(g, sp.outputs[0]) is gate:
                return x, mul, [sp, gate, mul], "Mish", {}
        if gate.inputs[0] != x:
            continue
        if gate.op == "Sigmoid":
            return x, mul, [gate, mul], "Swish", {"alpha": 1.0}
        if gate.op == "HardSigmoid" and match.is_close(gate.attrs.get("alpha"), 1 / 6) \
                and match.is_close(gate.attrs.get("beta"), 0.5):
            return x, mul, [gate, mul], "HardSwish", {}
    return None


def _gelu(g: Graph, last: Node):
    """The shared tail 0.5 * x * (1 + inner(x)), in the orders torch and tf2onnx emit:
    Mul(Mul(x, 1 + inner), 0.5), Mul(x, Mul(1 + inner, 0.5)), Mul(Mul(x, 0.5), 1 + inner)."""
    if last.op != "Mul":
        return None
    for half_side in last.inputs:
        other = match.other_input(last, half_side)
        if match.is_close(match.const_scalar(g, half_side), 0.5):
            # Mul(y, 0.5) where y = Mul(x, 1 + inner) or Mul(1 + inner, x)
            mul = match.producer_of(g, other, "Mul")
            if mul is None or match.only_consumer(g, other) is not last:
                continue
            for plus in mul.inputs:
                found = _inner(g, match.other_input(mul, plus), plus, mul)
                if found:
                    return found[0], last, found[1] + [mul, last], "Gelu", found[2]
        half = match.producer_of(g, half_side, "Mul")
        if half is not None and match.only_consumer(g, half_side) is last:
            # Mul(Mul(x, 0.5), 1 + inner)
            for xs in half.inputs:
                if match.is_close(match.const_scalar(g, match.other_input(half, xs)), 0.5):
                    found = _inner(g, xs, other, last)
                    if found:
                        return found[0], last, found[1] + [half, last], "Gelu", found[2]
    return None


def _inner(g: Graph, x: str, plus_name: str, reader: Node):
    """plus = Add(f, 1) with f = Erf(x/√2) or Tanh(√(2/π)(x + 0.044715 x³)); returns (x, nodes, attrs)."""
    plus = match.producer_of(g, plus_name, "Add")
    if plus is None or match.only_consumer(g, plus_name) is not reader:
        return None
    for f_name in plus.inputs:
        if not match.is_close(match.const_scalar(g, match.other_input(plus, f_name)), 1.0):
            continue
        f = g.producer(f_name)
        if f is None or match.only_consumer(g, f_name) is not plus:
            continue
        if f.op == "Erf":
            scaled = _scaled(g, f.inputs[0], x, 1 / SQRT2, f)
            if scaled is not None:
                return x, scaled + [f, plus], {"approximate": "none"}
        if f.op == "Tanh":
            nodes = _tanh_arg(g, f.inputs[0], x, f)
            if nodes is not None:
                return x, nodes + [f, plus], {"approximate": "tanh"}
    return None


def _scaled(g: Graph, name: str, x: str, factor: float, reader: Node) -> list[Node] | None:
    """name = x * factor, as Mul(x, factor) or Div(x, 1/factor)."""
    node = g.producer(name)
    if node is None or match.only_consumer(g, name) is not reader:
        return None
    if node.op == "Div" and node.inputs[0] == x and match.is_close(match.const_scalar(g, node.inputs[1]), 1 / factor):
        return [node]
    if node.op == "Mul" and x in node.inputs and \
            match.is_close(match.const_scalar(g, match.other_input(node, x)), factor):
        return [node]
    return None


def _tanh_arg(g: Graph, name: str, x: str, reader: Node) -> list[Node] | None:
    """name = √(2/π) * (x + 0.044715 * x³), with x³ as Pow(x, 3) or x*x*x."""
    outer = match.producer_of(g, name, "Mul")
    if outer is None or match.only_consumer(g, name) is not reader:
        return None
    for inner_name in outer.inputs:
        if not match.is_close(match.const_scalar(g, match.other_input(outer, inner_name)), SQRT_2_OVER_PI):
            continue
        add = match.producer_of(g, inner_name, "Add")
        if add is None or x not in add.inputs or match.only_consumer(g, inner_name) is not outer:
            continue
        cubic_name = match.other_input(add, x)
        cubic = _scaled_cube(g, cubic_name, x, add)
        if cubic is not None:
            return cubic + [add, outer]
    return None


def _scaled_cube(g: Graph, name: str, x: str, reader: Node) -> list[Node] | None:
    mul = match.producer_of(g, name, "Mul")
    if mul is None or match.only_consumer(g, name) is not reader:
        return None
    for cube_name in mul.inputs:
        if not match.is_close(match.const_scalar(g, match.other_input(mul, cube_name)), 0.044715):
            continue
        cube = g.producer(cube_name)
        if cube is None or match.only_consumer(g, cube_name) is not mul:
            continue
        if cube.op == "Pow" and cube.inputs[0] == x and match.is_close(match.const_scalar(g, cube.inputs[1]), 3.0):
            return [cube, mul]
        if cube.op == "Mul" and x in cube.inputs:  # x * (x * x)
            sq_name = match.other_input(cube, x)
            sq = match.producer_of(g, sq_name, "Mul")
            if sq is not None and sq.inputs == [x, x] and match.only_consumer(g, sq_name) is cube:
                return [sq, cube, mul]
    return None
