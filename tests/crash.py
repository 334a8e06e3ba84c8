"""Crash-and-restore tests: a process dying at a chosen row, and what a file sink committed.

A typical test runs a flow once straight through, then again with a checkpoint directory and a
``crash_at_row(n)`` sink that kills it mid-run, restores, and compares what was committed::

    flow.source(...).sink(crash_at_row(crash_after), name="watch")
    with pytest.raises(Crash):
        flow.run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    ...
    assert committed(out) == committed(reference)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl


class Crash(BaseException):
    """Stands in for the process dying at a chosen moment.

    A ``BaseException``, so no ``except Exception`` in the flow turns it into a dead letter or a
    retry: the run ends there, as a killed process would.
    """


def crash_at_row(n: int | None) -> Callable[[dict[str, Any]], None]:
    """A sink that raises :class:`Crash` on the ``n``-th row it is given (never, with ``None``)."""
    seen = 0

    def watch(row: dict[str, Any]) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            raise Crash

    return watch


def committed(directory: Path) -> list[dict[str, Any]]:
    """The rows a JSON-lines ``FileSink`` committed to ``directory``, in order (its in-progress
    files are hidden and not read)."""
    return [row for part in sorted(directory.glob("part-*")) for row in pl.read_ndjson(part).to_dicts()]


def committed_parts(out: Path, *names: str) -> dict[str, list[dict[str, Any]]]:
    """:func:`committed` for several sinks writing to ``out / name`` each."""
    return {name: committed(out / name) for name in names}
