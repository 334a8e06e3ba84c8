"""What the builders of joins and matches need to know about an input stream.

``api/joins.py`` and ``api/matching.py`` build nodes from these plain values, so they do not
import ``api/stream.py`` (which calls them): no import circle.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from rheon.core.eventtime import TimeType
from rheon.runtime.graph import Edge

__all__ = ["Side"]


@dataclass(frozen=True)
class Side:
    """An input of a join or a match: where it comes from and what is known about it.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("s")
    >>> tx = flow.source(rh.io.Records([{"card": "a", "ts": 0}]), time="ts")
    >>> side = tx.key_by("card")._side()
    >>> side.keys, side.time, side.label
    (('card',), 'ts', "source 'source_1'")
    """

    edge: Edge
    keys: tuple[str, ...]
    schema: pl.Schema | None
    time: str | None
    time_type: TimeType | None

    @property
    def label(self) -> str:
        return self.edge.node.label
