"""Channel-blocked values between depthwise-separable convolutions (run by the plan, on its own copy).

A value becomes blocked, stored (N, ceil(C / 16), H, W, 16) (bninfer.kernels.blocked), when the node that
makes it and every node that reads it take the blocked kernels (the members: 1x1, depthwise and stem convs,
bninfer.ops.conv_blocked.blocked_kind; squeeze-excitation's GlobalAveragePool, which only reads one, and
per-channel Mul, bninfer.ops.excite_blocked.se_kind; Winograd and direct convs), and the chain of such
values it belongs to holds a depthwise, Winograd or direct conv: the blocked depthwise kernel is what
pays for the layout, and the Winograd and direct kernels read it as they packed their NCHW input into
it. 1x1-only chains stay NCHW. In ResNet-50's bottlenecks the 1x1 convs then run blocked (the 1x1 kernel
at 7-25 % more GFLOP/s than on NCHW), between 3x3 convs that read their input without packing it.

A blocked chain's first 1x1 reads NCHW as it is (its inputs are broadcast either way), as does a stem
(a dense conv of an image's few channels, which then writes the first depthwise conv its blocked input);
a depthwise, Winograd or direct conv joins only with a blocked input, a Mul only with a blocked input and
output. A value read only by depthwise convs with the same pads is stored with that zero border, (N, NB,
H + pads, W + pads, 16): its producer (a conv) writes straight into the padded buffer and the depthwise
kernel reads it as it is. A Winograd conv reads its input only so, with its own border (its pads, and
the bottom and right that round the output up to whole 2x2 tiles), and a direct conv (a strided 3x3)
with its pads and rows of slack below them, beside no reader but such convs with the same border. A
Winograd conv without a residual writes its output blocked (no border) where its readers take it; a
direct conv writes NCHW. A chain member whose output leaves the chain writes NCHW through a scratch. The
pass marks each member with attrs["_blocked"] (a Marks) and gives blocked values their stored shape;
the optimized graph the session shows (and saves) stays plain NCHW.
"""
from __future__ import annotations

from ..ir import Graph
from ..kernels.blocked import CB, blocks
from ..ops import fusion
from ..ops.conv_blocked import Marks, blocked_kind, border_of, pads_of
from ..ops.excite_blocked import scaled_input, se_kind

ATTR = "_blocked"
BORDERED = ("wino", "direct")  # conv kinds that read a blocked input only with their own border


def run(graph: Graph) -> Graph:
    """A copy of `graph` with blocked values and marked nodes; `graph` itself unchanged."""
    def ins_of(node):
        return [graph.values[i] if i else None for i in node.inputs]

    kinds = {}
    for node in graph.nodes:
        kind = blocked_kind(node, ins_of(node), strided=True) or se_kind(node, ins_of(node))
        if kind is not None:
            kinds[node.name] = kind
    # the input a member reads blocked: a conv's X, a GlobalAveragePool's input, a Mul's scaled value
    main = {node.name: scaled_input(node, [graph.values[i] for i in node.inputs]) if kinds[node.name] == "scale"
            else 0 for node in graph.nodes if node.name in kinds}
    outputs = set(graph.outputs)

    def reads_ok(value: str) -> bool:
        """Every reader of `value` is a member that reads it where it can read a blocked value: a conv's X
        or residual, the input of a GlobalAveragePool, the scaled value of a Mul; a Winograd or direct
        conv's X only beside other such convs that read it with the same border."""
        readers = graph.consumers(value)
        borders = {border_of(n, ins_of(n), kinds[n.name]) if kinds.get(n.name) in BORDERED else None
                   for n in readers}
        if len(borders) > 1 and any(borders):
            return False
        for node in readers:
            if node.name not in kinds or kinds[node.name] == "stem":  # a stem reads NCHW only
                return False
            res = fusion.extra(node, "residual") if kinds[node.name] in ("pw", "dw") else None
            if any(name == value and k not in (main[node.name], res) for k, name in enumerate(node.inputs)):
                return False
        return True

    def blocked_values() -> set[str]:
        found = set()
        for node in graph.nodes:
            # (a mean per channel is no image to block; direct convs write NCHW, Winograd ones with a
            # residual too)
            kind = kinds.get(node.name)
            wino_res = kind == "wino" and fusion.extra(node, "residual") is not None
            if kind not in (None, "gap", "direct") and not wino_res:
                y = node.outputs[0]
                readers = graph.consumers(y)
                border = kind in ("pw", "dw", "stem")  # only these conv kernels write one
                if (y not in outputs and readers and reads_ok(y)
                        and (border or all(kinds[n.name] not in BORDERED for n in readers))):
                    found.add(y)
        return found

    # a depthwise, Winograd or direct conv or a Mul joins only with a blocked input, a Mul only with a
    # blocked output: drop those without until nothing changes
    while True:
        blocked = blocked_values()
        lone = [n.name for n in graph.nodes if kinds.get(n.name) in ("dw", "scale", *BORDERED)
                and (n.inputs[main[n.name]] not in blocked
                     or kinds[n.name] == "scale" and n.outputs[0] not in blocked)]
        if not lone:
            break
        for name in lone:
            del kinds[name]

    # chains: members linked by blocked values; keep the chains holding a depthwise, Winograd or direct
    # conv (what pays for the layout)
    parent = {name: name for name in kinds}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for value in blocked:
        a = root(graph.producer(value).name)
        for node in graph.consumers(value):
            parent[root(node.name)] = a
    paying = {root(name) for name, kind in kinds.items() if kind in ("dw", *BORDERED)}
    blocked = {v for v in blocked if root(graph.producer(v).name) in paying}
    if not blocked:
        return graph

    # a zero border for values that only depthwise convs read, all with the same pads
    pads = {}
    for value in blocked:
        readers = graph.consumers(value)
        if kinds[graph.producer(value).name] not in ("pw", "dw", "stem"):
            continue  # only the conv kernels write a border
        # a depthwise reader that also adds the value as its residual reads it unpadded there
        found = {pads_of(n, ins_of(n)) if kinds[n.name] == "dw" and n.inputs.count(value) == 1
                 else border_of(n, ins_of(n), kinds[n.name]) if kinds[n.name] in BORDERED else None
                 for n in readers}
        if len(found) == 1 and None not in found and any(next(iter(found))):
            pads[value] = next(iter(found))

    g = graph.copy()
    for node in g.nodes:
        if node.name not in kinds:
            continue
        if kinds[node.name] in ("gap", "scale"):
            if node.inputs[main[node.name]] in blocked:  # (a Mul's output then is too)
                node.attrs[ATTR] = Marks(True, False, kinds[node.name] == "scale", None, None)
            continue
        res = fusion.extra(node, "residual")
        x, y = node.inputs[0], node.outputs[0]
        marks = Marks(x in blocked, res is not None and node.inputs[res] in blocked, y in blocked,
                      pads.get(x), pads.get(y))
        if marks.x or marks.res or marks.y:
            node.attrs[ATTR] = marks
    for name in blocked:
        v = g.values[name]
        n, c, h, w = v.shape
        ph, pw, eh, ew = pads.get(name, (0, 0, 0, 0))
        v.shape = (n, blocks(c), h + ph + eh, w + pw + ew, CB)
    return g
