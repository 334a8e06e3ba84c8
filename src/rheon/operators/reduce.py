"""Keyed running reduce: the streaming half of map-reduce."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.batch import WM_COL, Batch
from rheon.core.collector import no_gc
from rheon.core.deadletters import dead_letter_frame, payload_of
from rheon.operators._keys import key_getter
from rheon.operators._rows import ROW_CHUNK, RowsOut, frame_to_rows, rows_to_frame
from rheon.operators.base import DEAD, MAIN, Operator, Output, State
from rheon.state.backends import KeyedStateBackend, MemoryBackend
from rheon.state.inspect import keyed_frame
from rheon.state.shared import SharedFiles

__all__ = ["Reduce"]

Row = dict[str, Any]
_MISSING = object()


class Reduce(Operator):
    """Fold each key's records with ``fn(acc, record) -> acc`` and emit every new ``acc``.

    The first record of a key is its initial ``acc`` and is emitted as is (like Flink's
    ``ReduceFunction`` and Kafka Streams' ``reduce``). A record whose key column is missing or
    unhashable, or on which ``fn`` raises, goes to the dead-letter output; the key's state is
    left as it was.
    """

    kind = "reduce"
    stateful = True

    def __init__(
        self,
        name: str,
        keys: Sequence[str],
        fn: Callable[[Row, Row], Mapping[str, Any]],
        backend: KeyedStateBackend | None = None,
    ) -> None:
        super().__init__(name)
        self.keys = list(keys)
        self.fn = fn
        self.backend = backend if backend is not None else MemoryBackend()
        self.rows_out = RowsOut(self.label)

    @override
    def signature(self) -> dict[str, Any]:
        return {"kind": self.kind, "keys": self.keys}

    @override
    def state_table(self) -> pl.DataFrame:
        """Each key's running value (``acc``)."""
        return keyed_frame(self.backend.items())

    @override
    def snapshot(self, files: SharedFiles) -> State:
        return {}, {"state": self.backend.snapshot(files)}

    @override
    def restore(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any], files: SharedFiles) -> None:
        self.backend.restore(objects["state"], files)

    @override
    def close(self) -> None:
        self.backend.close()

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        frame = batch.frame
        if frame.height == 0:
            return [(MAIN, self.empty_like(batch))]
        dead_reasons: list[str] = []
        dead_payloads: list[str] = []
        with no_gc():
            chunks = [
                self._chunk(frame.slice(i, ROW_CHUNK), i, dead_reasons, dead_payloads)
                for i in range(0, frame.height, ROW_CHUNK)
            ]
            self.backend.end_batch()
        out, bad = self.rows_out.batch(chunks)
        dead_reasons += [reason for _, reason, _ in bad]
        dead_payloads += [payload for _, _, payload in bad]
        outputs: list[Output] = [(MAIN, batch.with_frame(out))]
        if dead_reasons:
            letters = dead_letter_frame(self.label, dead_reasons, dead_payloads)
            outputs.append((DEAD, Batch(letters, watermark=batch.watermark, ingest_ns=batch.ingest_ns)))
        return outputs

    def _chunk(
        self, frame: pl.DataFrame, offset: int, dead_reasons: list[str], dead_payloads: list[str]
    ) -> tuple[pl.DataFrame, int]:
        rows, _ = frame_to_rows(frame)
        key_of = key_getter(self.keys, frame.schema)
        cells_of, fn = self.backend.cells, self.fn
        out: list[Row] = []
        idx: list[int] = []
        for i, row in enumerate(rows):
            try:
                cells = cells_of(key_of(row))
                acc = cells.get("acc", _MISSING)
            except (KeyError, TypeError) as exc:
                dead_reasons.append(f"bad key {self.keys}: {type(exc).__name__}: {exc}")
                dead_payloads.append(payload_of(row))
                continue
            if acc is _MISSING:
                new: Any = row
            else:
                try:
                    new = fn(acc, row)
                except Exception as exc:
                    self.first_error = self.first_error or exc
                    dead_reasons.append(f"{type(exc).__name__}: {exc}")
                    dead_payloads.append(payload_of(row))
                    continue
                if not isinstance(new, Mapping):
                    dead_reasons.append(f"{self.label} returned a {type(new).__name__}, expected a dict")
                    dead_payloads.append(payload_of(row))
                    continue
            snapshot = dict(new)
            cells["acc"] = snapshot
            out.append(dict(snapshot))
            idx.append(i)
        wms = frame.get_column(WM_COL).gather(idx).to_list() if WM_COL in frame.columns else None
        result, misfits = rows_to_frame(out, wms, frame.schema)
        dead_reasons += [self.rows_out.misfit(name, value, dtype) for _, name, value, dtype in misfits]
        dead_payloads += [payload_of(out[j]) for j, *_ in misfits]
        return result, offset
