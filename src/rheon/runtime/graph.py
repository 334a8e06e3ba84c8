"""The logical flow graph that the API builds and the runtime plans.

A node is one step the user wrote (a source, a filter, a window aggregation, a sink...): its
spec (``runtime/specs.py``) says what it does, as data. Edges carry a tag: ``"main"`` for a
node's ordinary output, ``"late"`` for a window's late events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

import polars as pl

from rheon.core.errors import FlowError
from rheon.core.eventtime import TimeType
from rheon.runtime.specs import Spec

__all__ = ["Edge", "Graph", "Node", "SideOutput"]

_ids = count()


@dataclass(eq=False)
class Node:
    """One step of a flow: what it does (its spec), its inputs, and what is known about its
    output at build time.

    Examples
    --------
    >>> import polars as pl
    >>> from rheon.runtime.specs import FilterSpec
    >>> Node("big", FilterSpec(pl.col("amount") > 100)).label
    "filter 'big'"
    """

    name: str
    spec: Spec
    inputs: list[Edge] = field(default_factory=list)
    schema: pl.Schema | None = None
    time: str | None = None
    time_type: TimeType | None = None
    side_outputs: dict[str, SideOutput] = field(default_factory=dict)
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def kind(self) -> str:
        """The step's kind: ``"window"``, ``"source"``, ``"map"``..."""
        return self.spec.kind

    @property
    def uses_event_time(self) -> bool:
        """Whether the step needs per-record watermarks from the sources upstream."""
        return self.spec.uses_event_time

    @property
    def label(self) -> str:
        """How messages name this node: ``"window 'per_card'"``."""
        return f"{self.kind} '{self.name}'"

    def __repr__(self) -> str:
        return f"<{self.label}>"


@dataclass(frozen=True)
class SideOutput:
    """What is known about a node's non-main output (a window's late events)."""

    schema: pl.Schema | None
    time: str | None
    time_type: TimeType | None


@dataclass(frozen=True, eq=False)
class Edge:
    """An input of a node: ``node``'s output with ``tag``."""

    node: Node
    tag: str = "main"


class Graph:
    """The nodes of one flow, in the order they were added (which is a topological order)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        self._counters: dict[str, int] = {}

    def name_for(self, kind: str, name: str | None) -> str:
        """The user's name if given (checked unique), else ``kind_N``."""
        if name is not None:
            if not isinstance(name, str) or not name:
                msg = f"{kind}: name must be a non-empty string (got {name!r})"
                raise FlowError(msg)
            if name in self._names:
                msg = f"{kind} '{name}': the name is already used in flow '{self.name}'. Operator names must be unique."
                raise FlowError(msg)
            return name
        n = self._counters.get(kind, 0)
        while True:
            n += 1
            candidate = f"{kind}_{n}"
            if candidate not in self._names:
                self._counters[kind] = n
                return candidate

    def add(self, node: Node) -> Node:
        """Register a node (its name must come from :meth:`name_for`)."""
        self._names.add(node.name)
        self.nodes.append(node)
        return node

    def consumers(self) -> dict[int, list[tuple[Node, int, str]]]:
        """For each node id, the ``(consumer, input port, tag)`` triples reading from it."""
        out: dict[int, list[tuple[Node, int, str]]] = {n.id: [] for n in self.nodes}
        for node in self.nodes:
            for port, edge in enumerate(node.inputs):
                out[edge.node.id].append((node, port, edge.tag))
        return out
