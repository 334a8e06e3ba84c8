"""From graph to plan: which nodes fuse into one operator, where each output goes, and which
sources must compute per-record watermarks."""

from __future__ import annotations

from dataclasses import dataclass, field

from rheon.core.errors import FlowError
from rheon.runtime.graph import Graph, Node
from rheon.runtime.specs import FilterSpec, RowSpec, SelectSpec, WithColumnsSpec

__all__ = ["OpGroup", "Plan", "make_plan"]


@dataclass(eq=False)
class OpGroup:
    """Nodes that run as one operator (several when Python steps or expression steps are fused)."""

    nodes: list[Node]
    index: int = 0

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def tail(self) -> Node:
        return self.nodes[-1]

    @property
    def label(self) -> str:
        if len(self.nodes) == 1:
            return self.head.label
        return "chain '" + "+".join(n.name for n in self.nodes) + "'"


@dataclass
class Plan:
    """What the executor needs to run a graph."""

    graph: Graph
    sources: list[Node]
    groups: list[OpGroup]
    routes: dict[tuple[int, str], list[tuple[int, int]]] = field(default_factory=dict)
    needs_wm: set[int] = field(default_factory=set)
    dead_letter_groups: list[int] = field(default_factory=list)

    def describe(self) -> str:
        """A readable outline of the plan, one operator per line."""
        lines = [f"flow '{self.graph.name}'"]
        for src in self.sources:
            wm = " (per-record watermarks)" if src.id in self.needs_wm else ""
            lines.append(f"  {src.label} time={src.time!r}{wm}: {src.spec.describe()}")
        for g in self.groups:
            ins = ", ".join(f"{e.node.name}" + (f"[{e.tag}]" if e.tag != "main" else "") for e in g.head.inputs)
            what = g.head.spec.describe() if len(g.nodes) == 1 else ""
            lines.append(f"  {g.label} <- {ins or '-'}" + (f": {what}" if what else ""))
        return "\n".join(lines)


FUSED: tuple[tuple[type, ...], ...] = ((RowSpec,), (FilterSpec, WithColumnsSpec, SelectSpec))
"""Kinds of steps that fuse with their parent of the same kind: Python row functions (one
conversion to dicts and back for the chain) and expression steps (one Polars query)."""


def _fusable(node: Node, graph_consumers: dict[int, list[tuple[Node, int, str]]]) -> bool:
    if len(node.inputs) != 1:
        return False
    edge = node.inputs[0]
    parent = edge.node
    if edge.tag != "main" or len(graph_consumers[parent.id]) != 1:
        return False
    return any(isinstance(node.spec, kinds) and isinstance(parent.spec, kinds) for kinds in FUSED)


def make_plan(graph: Graph) -> Plan:
    """Plan a graph; raise :class:`FlowError` if it cannot run."""
    sources = [n for n in graph.nodes if n.kind == "source"]
    if not sources:
        msg = f"flow '{graph.name}' has no source. Try flow.source(rh.io.Records(rows))."
        raise FlowError(msg)
    if not any(n.kind == "sink" for n in graph.nodes):
        msg = (
            f"flow '{graph.name}' has no sink, so running it would compute nothing. "
            "Try stream.sink(rh.io.Collect()) or stream.sink(rh.io.Console())."
        )
        raise FlowError(msg)
    consumers = graph.consumers()
    groups: list[OpGroup] = []
    group_of: dict[int, OpGroup] = {}
    for node in graph.nodes:
        if node.kind == "source":
            continue
        if _fusable(node, consumers):
            group = group_of[node.inputs[0].node.id]
            group.nodes.append(node)
        else:
            group = OpGroup([node], index=len(groups))
            groups.append(group)
        group_of[node.id] = group
    plan = Plan(graph, sources, groups)
    for group in groups:
        for port, edge in enumerate(group.head.inputs):
            upstream = edge.node
            tail_id = upstream.id if upstream.kind == "source" else group_of[upstream.id].tail.id
            plan.routes.setdefault((tail_id, edge.tag), []).append((group.index, port))
        if group.head.kind == "dead_letters":
            plan.dead_letter_groups.append(group.index)
    for src in sources:
        if _reaches_event_time(src, consumers):
            plan.needs_wm.add(src.id)
    return plan


def _reaches_event_time(start: Node, consumers: dict[int, list[tuple[Node, int, str]]]) -> bool:
    seen: set[int] = set()
    stack = [start]
    while stack:
        node = stack.pop()
        if node.id in seen:
            continue
        seen.add(node.id)
        if node.uses_event_time:
            return True
        stack.extend(c for c, _, _ in consumers[node.id])
    return False
