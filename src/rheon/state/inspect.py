"""Look into a checkpoint without running its flow: ``rh.inspect(dir)`` and ``rheon inspect DIR``.

A checkpoint holds, per operator, its frames (a window's panes), its objects (watermarks,
positions) and, for keyed operators, a reference to its keyed state in ``shared/``. Inspection
reads the newest intact checkpoint (or a given one), verified like a restore, and shows each
operator's keys, key groups, timers and bytes, and its state as a Polars DataFrame: one row per
key for keyed state (``key``, ``key_group``, then one column per state cell), the frames as
they are, the objects of sources and other operators as one row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from rheon.core.errors import FlowError
from rheon.state.backends import MemoryBackend
from rheon.state.checkpoints import CheckpointStore, OperatorSnapshot
from rheon.state.keyed import key_group
from rheon.state.shared import SharedFiles

__all__ = ["CheckpointView", "OperatorState", "inspect", "keyed_frame"]


def _plain(value: Any) -> Any:
    """A process function's stored cell without its write times: ``(value, ms)`` -> ``value``."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return _plain(value[0])
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _column(name: str, values: list[Any]) -> pl.Series:
    """Values as a column: typed when Polars can, else as text (``repr``)."""
    try:
        column = pl.Series(name, values, strict=False)
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
        column = None
    if column is None or column.dtype == pl.Object:
        return pl.Series(name, [None if v is None else repr(v) for v in values], dtype=pl.String)
    return column


def keyed_frame(items: Iterable[tuple[Any, Mapping[str, Any]]], *, timestamps: bool = False) -> pl.DataFrame:
    """Keyed state as a table: ``key``, ``key_group``, then one column per cell name.

    With ``timestamps`` (a process function's cells), each stored ``(value, written_ms)`` shows
    as its value.

    Examples
    --------
    >>> keyed_frame([("a", {"n": 3}), ("b", {"n": 5, "last": "x"})])
    shape: (2, 4)
    ┌─────┬───────────┬─────┬──────┐
    │ key ┆ key_group ┆ n   ┆ last │
    │ --- ┆ ---       ┆ --- ┆ ---  │
    │ str ┆ i64       ┆ i64 ┆ str  │
    ╞═════╪═══════════╪═════╪══════╡
    │ a   ┆ 122       ┆ 3   ┆ null │
    │ b   ┆ 57        ┆ 5   ┆ x    │
    └─────┴───────────┴─────┴──────┘
    """
    keys: list[Any] = []
    cells: list[Mapping[str, Any]] = []
    names: dict[str, None] = {}
    for key, cell in items:
        keys.append(key)
        cells.append(cell)
        names.update(dict.fromkeys(cell))
    columns = [_column("key", keys), pl.Series("key_group", [key_group(k) for k in keys], dtype=pl.Int64)]
    for name in names:
        values = [c.get(name) for c in cells]
        columns.append(_column(name, [_plain(v) for v in values] if timestamps else values))
    return pl.DataFrame(columns)


@dataclass
class OperatorState:
    """One operator's (or source's) part of a checkpoint."""

    name: str
    kind: str
    signature: dict[str, Any]
    frames: dict[str, pl.DataFrame]
    objects: dict[str, Any]
    keyed: dict[Any, dict[str, Any]] | None = None
    """Keyed state: key -> its cells (``None``: the operator keeps none)."""
    timers: int = 0
    bytes: int = 0
    """Bytes on disk: its frames and objects in the checkpoint, and the keyed-state files it refers to."""

    @property
    def keys(self) -> int | None:
        """Keys with state (or rows of its main frame), ``None`` when it keeps neither."""
        if self.keyed is not None:
            return len(self.keyed)
        if self.frames:
            return next(iter(self.frames.values())).height
        return None

    @property
    def key_groups(self) -> int | None:
        """Key groups its keyed state spans (``None`` without keyed state)."""
        if self.keyed is None:
            return None
        return len({key_group(k) for k in self.keyed})

    def table(self) -> pl.DataFrame:
        """The state as a DataFrame: keyed state by key, else its frame, else its objects as one row."""
        if self.keyed is not None:
            return keyed_frame(self.keyed.items(), timestamps=self.kind == "process")
        if self.frames:
            if len(self.frames) == 1:
                return next(iter(self.frames.values()))
            return pl.concat(
                [f.with_columns(pl.lit(k).alias("frame")) for k, f in self.frames.items()], how="diagonal_relaxed"
            )
        return pl.DataFrame([_column(k, [v]) for k, v in self.objects.items() if k != "state"])


@dataclass
class CheckpointView:
    """What :func:`inspect` found: the checkpoint and each operator's state.

    Examples
    --------
    >>> import tempfile, rheon as rh
    >>> d = tempfile.mkdtemp()
    >>> flow = rh.Flow("cards")
    >>> rows = [{"card": c, "amount": a} for c, a in [("a", 5), ("b", 7), ("a", 1)]]
    >>> flow.source(rh.io.Records(rows), name="tx").key_by("card").reduce(
    ...     lambda acc, r: {**r, "amount": acc["amount"] + r["amount"]}, name="totals").sink(rh.io.Collect())
    >>> flow.run(checkpoint_dir=d)
    >>> view = rh.inspect(d)
    >>> view.flow, [(o.name, o.kind, o.keys) for o in view.operators]
    ('cards', [('tx', 'source', None), ('totals', 'reduce', 2)])
    >>> view.state("totals").sort("key").select("key", "acc").to_dicts()
    [{'key': 'a', 'acc': {'card': 'a', 'amount': 6}}, {'key': 'b', 'acc': {'card': 'b', 'amount': 7}}]
    """

    id: int
    path: Path
    flow: str
    created_ms: int | None
    finished: bool
    operators: list[OperatorState] = field(default_factory=list)

    def operator(self, name: str) -> OperatorState:
        """The part of the operator (or source) named ``name``."""
        for op in self.operators:
            if op.name == name:
                return op
        known = ", ".join(op.name for op in self.operators)
        msg = f"checkpoint {self.path} has no operator '{name}' (operators: {known})"
        raise FlowError(msg)

    def state(self, name: str) -> pl.DataFrame:
        """The state of operator ``name`` as a DataFrame (see :meth:`OperatorState.table`)."""
        return self.operator(name).table()

    def summary(self) -> pl.DataFrame:
        """One row per operator: name, kind, keys, key groups, timers, bytes."""
        return pl.DataFrame(
            {
                "operator": [o.name for o in self.operators],
                "kind": [o.kind for o in self.operators],
                "keys": [o.keys for o in self.operators],
                "key_groups": [o.key_groups for o in self.operators],
                "timers": [o.timers for o in self.operators],
                "bytes": [o.bytes for o in self.operators],
            },
            schema={
                "operator": pl.String,
                "kind": pl.String,
                "keys": pl.Int64,
                "key_groups": pl.Int64,
                "timers": pl.Int64,
                "bytes": pl.Int64,
            },
        )


def _keyed_state(snap: OperatorSnapshot, files: SharedFiles) -> dict[Any, dict[str, Any]] | None:
    saved = snap.objects.get("state")
    if not (isinstance(saved, dict) and "backend" in saved):
        return None
    backend = MemoryBackend()
    backend.restore(saved, files)
    return dict(backend.data)


def _timers(snap: OperatorSnapshot) -> int:
    count = 0
    for domain in ("event", "processing"):
        groups = snap.objects.get(domain)
        if isinstance(groups, dict):
            count += sum(len(v) for v in groups.values() if isinstance(v, list))
    return count


def inspect(directory: str | Path, checkpoint_id: int | None = None) -> CheckpointView:
    """Read a checkpoint (the newest intact one, or ``checkpoint_id``) without running its flow.

    Examples
    --------
    >>> import tempfile, rheon as rh
    >>> rh.inspect(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    rheon.core.errors.FlowError: no checkpoint in ... (a flow writes them with run(checkpoint_dir=...))
    """
    path = Path(directory)
    if not path.is_dir():
        msg = f"no checkpoint directory at '{path}'"
        raise FlowError(msg)
    store = CheckpointStore(path)
    checkpoint = store.load(checkpoint_id) if checkpoint_id is not None else store.latest()
    if checkpoint is None:
        msg = f"no checkpoint in {path} (a flow writes them with run(checkpoint_dir=...))"
        raise FlowError(msg)
    view = CheckpointView(
        checkpoint.id,
        checkpoint.path,
        str(checkpoint.meta.get("flow", "")),
        checkpoint.meta.get("created_ms"),
        bool(checkpoint.meta.get("finished")),
    )
    sizes = {f.name: f.stat().st_size for f in checkpoint.path.iterdir() if f.is_file()}
    for index, (name, snap) in enumerate(checkpoint.operators.items()):
        stem = f"op-{index:04d}"
        own = sum(size for file, size in sizes.items() if file.startswith(stem))
        shared = [store.shared_dir / file for file in snap.shared]
        own += sum(p.stat().st_size for p in shared if p.is_file())
        files = store.shared_for(name)
        view.operators.append(
            OperatorState(
                name,
                snap.kind,
                dict(snap.signature),
                snap.frames,
                snap.objects,
                keyed=_keyed_state(snap, files),
                timers=_timers(snap),
                bytes=own,
            )
        )
    return view
