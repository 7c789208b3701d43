"""What the optimizer did: kept beside each plan and shown by `session.optimization_report()`."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    nodes_before: dict[str, int] = field(default_factory=dict)
    nodes_after: dict[str, int] = field(default_factory=dict)
    batchnorms: list[str] = field(default_factory=list)  # one line per BN: what became of it
    fusions: list[str] = field(default_factory=list)  # one line per fused chain
    eliminated: list[str] = field(default_factory=list)
    max_deviation: float | None = None  # optimized vs unoptimized on a random input, when measured

    def __str__(self) -> str:
        lines = ["nodes before: " + _counts(self.nodes_before),
                 "nodes after:  " + _counts(self.nodes_after)]
        for title, items in (("BatchNormalization", self.batchnorms), ("fused", self.fusions),
                             ("eliminated", self.eliminated)):
            if items:
                lines.append(f"{title}:")
                lines.extend("  " + s for s in items)
        if self.max_deviation is not None:
            lines.append(f"largest deviation from the unoptimized graph: {self.max_deviation:.3g}")
        return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return f"{total} (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"
