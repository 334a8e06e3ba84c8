"""The checkpoint coordinator: what a checkpoint holds, when it is taken, how a run resumes.

The executor runs the whole flow in one thread and finishes each batch before reading the next,
so *between* two batches every operator has seen exactly the records the sources have handed
out: a consistent cut, with no barriers to align. A checkpoint is taken there:

1. each sink ``pre_commit(n)``: what it wrote since the last checkpoint becomes durable, still
   invisible;
2. source positions, watermarks and every stateful operator's state are written to
   ``checkpoint_dir/chk-n`` (atomically, see :mod:`rheon.state.checkpoints`);
3. each sink ``commit(n)``: the output of the interval becomes visible.

On start the newest intact checkpoint is loaded (each is verified against the checksums in its
manifest first; a damaged one is reported and the one before it is tried): sources rewind to
their positions, operators reload their state, and each sink ``recover(n)`` completes commits up
to ``n`` (a crash between steps 2 and 3) and deletes anything later. Since results do not depend on batching, the replay
writes exactly the rows that were discarded: replayable sources + this state + committing sinks
give exactly-once output.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rheon.core.errors import CheckpointError, FlowError
from rheon.operators.sink import SinkOperator
from rheon.state.checkpoints import CheckpointStore, OperatorSnapshot

if TYPE_CHECKING:
    from rheon.runtime.executor import Executor

__all__ = ["CheckpointCoordinator", "CheckpointSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointSettings:
    """Where and how often to checkpoint."""

    directory: Path
    every_ms: int
    keep: int = 3


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class CheckpointCoordinator:
    """Takes checkpoints of one executor and restores it from the latest one."""

    def __init__(self, settings: CheckpointSettings, executor: Executor) -> None:
        self.settings = settings
        self.executor = executor
        self.store = CheckpointStore(settings.directory, keep=settings.keep)
        self.next_id = 1
        self.last_ns = 0
        self.count = 0
        self.restored_from: int | None = None
        self.last_duration_ms: float | None = None
        self.restore_ms: float | None = None

    def _sinks(self) -> list[SinkOperator]:
        return [op for op in self.executor.ops if isinstance(op, SinkOperator)]

    # -- restore -------------------------------------------------------------------------------

    def _mismatch(self, label: str, path: Path, saved: Any, now: Any) -> FlowError:
        msg = (
            f"{label}: its state in checkpoint {path} was written by a different operator "
            f"(then: {saved}; now: {now}). Resume with the code that wrote it, start from a new "
            "checkpoint_dir, or give the changed operator a new name."
        )
        return FlowError(msg)

    def restore(self) -> None:
        """Load the newest intact checkpoint, if any, into the executor's sources and operators.

        Damaged newer checkpoints are logged and set aside; if no checkpoint is intact this
        raises :class:`~rheon.core.errors.CheckpointError` and the flow does not start.
        """
        started = time.perf_counter()
        try:
            self._restore()
        finally:
            self.restore_ms = (time.perf_counter() - started) * 1000

    def _restore(self) -> None:
        ex = self.executor
        checkpoint = self.store.latest()
        self.last_ns = ex.clock.now_ns()
        if checkpoint is None:
            for sink in self._sinks():
                sink.logic.recover(None)
            return
        flow = ex.plan.graph.name
        if checkpoint.meta.get("flow") != flow:
            msg = (
                f"flow '{flow}': checkpoint {checkpoint.path} belongs to flow "
                f"'{checkpoint.meta.get('flow')}'. Use one checkpoint_dir per flow."
            )
            raise FlowError(msg)
        used: set[str] = set()
        for task in ex.sources:
            snap = checkpoint.operators.get(task.node.name)
            if snap is None:
                continue
            used.add(task.node.name)
            signature = ex.source_signature(task)
            if _normal(signature) != snap.signature:
                raise self._mismatch(task.node.label, checkpoint.path, snap.signature, _normal(signature))
            ex.restore_source(task, snap.objects)
        for group, op in zip(ex.plan.groups, ex.ops, strict=True):
            name = group.tail.name
            snap = checkpoint.operators.get(name)
            if snap is None:
                continue
            used.add(name)
            if not op.stateful or _normal(op.signature()) != snap.signature:
                raise self._mismatch(group.label, checkpoint.path, snap.signature, _normal(op.signature()))
            op.restore(snap.frames, snap.objects, self.store.shared_for(name))
        unknown = sorted(set(checkpoint.operators) - used)
        if unknown:
            msg = (
                f"flow '{flow}': checkpoint {checkpoint.path} holds state of {', '.join(unknown)}, "
                "which the flow no longer has. Restore it with the flow that wrote it or start from "
                "a new checkpoint_dir."
            )
            raise FlowError(msg)
        for sink in self._sinks():
            sink.logic.recover(checkpoint.id)
        self.next_id = checkpoint.id + 1
        self.restored_from = checkpoint.id
        log.info("restored flow=%s checkpoint=%d finished=%s", flow, checkpoint.id, checkpoint.meta.get("finished"))

    # -- checkpoint ----------------------------------------------------------------------------

    def due(self, now_ns: int) -> bool:
        return now_ns - self.last_ns >= self.settings.every_ms * 1_000_000

    def seconds_until_due(self, now_ns: int) -> float:
        return max(0.0, (self.last_ns + self.settings.every_ms * 1_000_000 - now_ns) / 1e9)

    def checkpoint(self, *, final: bool = False) -> int:
        """Take checkpoint ``next_id`` now (between batches) and commit the sinks' output."""
        ex = self.executor
        started = time.perf_counter()
        checkpoint_id = self.next_id
        sinks = self._sinks()
        for sink in sinks:
            sink.logic.pre_commit(checkpoint_id)
        snaps: dict[str, OperatorSnapshot] = {}
        for task in ex.sources:
            snaps[task.node.name] = OperatorSnapshot(
                "source", _normal(ex.source_signature(task)), {}, ex.snapshot_source(task)
            )
        for group, op in zip(ex.plan.groups, ex.ops, strict=True):
            files = self.store.shared_for(group.tail.name)
            try:
                state = op.snapshot(files) if op.stateful else None
            except OSError as exc:  # keyed state written to checkpoint_dir/shared
                where = exc.filename if isinstance(exc.filename, str) else str(files.directory)
                msg = (
                    f"{group.label}: checkpoint {checkpoint_id} could not be written: writing {where} failed: "
                    f"{exc.strerror or exc}. Free space on that disk or make {self.store.directory} writable (or "
                    "point checkpoint_dir elsewhere); the flow resumes from the last complete checkpoint when "
                    "restarted."
                )
                raise CheckpointError(msg) from exc
            if state is not None:
                frames, objects = state
                snaps[group.tail.name] = OperatorSnapshot(
                    op.kind, _normal(op.signature()), frames, objects, files.referenced
                )
        meta = {"flow": ex.plan.graph.name, "created_ms": ex.clock.now_ns() // 1_000_000, "finished": final}
        self.store.write(checkpoint_id, meta, snaps)
        for sink in sinks:
            sink.logic.commit(checkpoint_id)
        for task in ex.sources:
            task.logic.checkpoint_done(checkpoint_id)
        self.next_id += 1
        self.count += 1
        self.last_ns = ex.clock.now_ns()
        self.last_duration_ms = (time.perf_counter() - started) * 1000
        log.debug("checkpoint id=%d ms=%.1f final=%s", checkpoint_id, self.last_duration_ms, final)
        return checkpoint_id
