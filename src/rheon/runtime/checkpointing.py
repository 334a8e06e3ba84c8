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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from rheon.core.errors import CheckpointError, FlowError
from rheon.core.metrics import CheckpointStats
from rheon.state.checkpoints import CheckpointStore, OperatorSnapshot
from rheon.state.shared import SharedFiles
from rheon.time.clock import Clock

__all__ = ["CheckpointCoordinator", "CheckpointSettings", "Committer", "Participant"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointSettings:
    """Where and how often to checkpoint."""

    directory: Path
    every_ms: int
    keep: int = 3


class Participant(Protocol):
    """Something whose state a checkpoint holds: a source (its position and watermark) or an
    operator. Operators (:class:`~rheon.operators.base.Operator`) are participants as they are."""

    @property
    def name(self) -> str:
        """The key of its state in a checkpoint (unique in the flow)."""
        ...

    @property
    def label(self) -> str:
        """How messages name it: ``"window 'per_card'"``."""
        ...

    @property
    def kind(self) -> str: ...

    @property
    def stateful(self) -> bool:
        """Whether it has state to save."""
        ...

    def signature(self) -> dict[str, Any]:
        """What must stay the same for its saved state to be restored."""
        ...

    def snapshot(self, files: SharedFiles) -> tuple[dict[str, pl.DataFrame], dict[str, Any]] | None: ...

    def restore(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any], files: SharedFiles) -> None: ...

    def checkpoint_done(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` is complete (a source may acknowledge what it read)."""
        ...


class Committer(Protocol):
    """A sink that makes its output visible per checkpoint (two-phase commit)."""

    def pre_commit(self, checkpoint_id: int) -> None: ...

    def commit(self, checkpoint_id: int) -> None: ...

    def recover(self, checkpoint_id: int | None) -> None: ...


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class CheckpointCoordinator:
    """Takes checkpoints of a flow's participants and restores them from the latest one.

    Parameters
    ----------
    settings
        Where and how often.
    flow
        The flow's name (a checkpoint belongs to one flow).
    clock
        The flow's clock.
    participants
        Sources and operators, whose state each checkpoint holds.
    sinks
        The sinks, which commit their output per checkpoint.
    stats
        Where to count checkpoints, failures, durations and sizes (the flow's metrics).
    """

    def __init__(
        self,
        settings: CheckpointSettings,
        *,
        flow: str,
        clock: Clock,
        participants: Sequence[Participant],
        sinks: Sequence[Committer],
        stats: CheckpointStats | None = None,
    ) -> None:
        self.settings = settings
        self.flow = flow
        self.clock = clock
        self.participants = list(participants)
        self.sinks = list(sinks)
        self.stats = stats if stats is not None else CheckpointStats()
        self._logged_at = 0.0
        self.store = CheckpointStore(settings.directory, keep=settings.keep)
        self.next_id = 1
        self.last_ns = 0
        self.count = 0
        self.restored_from: int | None = None
        self.last_duration_ms: float | None = None
        self.restore_ms: float | None = None

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
        checkpoint = self.store.latest()
        self.last_ns = self.clock.now_ns()
        if checkpoint is None:
            for sink in self.sinks:
                sink.recover(None)
            return
        flow = self.flow
        if checkpoint.meta.get("flow") != flow:
            msg = (
                f"flow '{flow}': checkpoint {checkpoint.path} belongs to flow "
                f"'{checkpoint.meta.get('flow')}'. Use one checkpoint_dir per flow."
            )
            raise FlowError(msg)
        used: set[str] = set()
        for part in self.participants:
            snap = checkpoint.operators.get(part.name)
            if snap is None:
                continue
            used.add(part.name)
            signature = _normal(part.signature())
            if not part.stateful or signature != snap.signature:
                raise self._mismatch(part.label, checkpoint.path, snap.signature, signature)
            part.restore(snap.frames, snap.objects, self.store.shared_for(part.name))
        unknown = sorted(set(checkpoint.operators) - used)
        if unknown:
            msg = (
                f"flow '{flow}': checkpoint {checkpoint.path} holds state of {', '.join(unknown)}, "
                "which the flow no longer has. Restore it with the flow that wrote it or start from "
                "a new checkpoint_dir."
            )
            raise FlowError(msg)
        for sink in self.sinks:
            sink.recover(checkpoint.id)
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
        started = time.perf_counter()
        try:
            return self._checkpoint(final=final)
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            duration_ms = (time.perf_counter() - started) * 1000
            self.stats.failed(duration_ms=duration_ms, now_ns=time.time_ns(), checkpoint_id=self.next_id, error=error)
            raise

    def _checkpoint(self, *, final: bool) -> int:
        started = time.perf_counter()
        checkpoint_id = self.next_id
        for sink in self.sinks:
            sink.pre_commit(checkpoint_id)
        snaps: dict[str, OperatorSnapshot] = {}
        for part in self.participants:
            if not part.stateful:
                continue
            files = self.store.shared_for(part.name)
            try:
                state = part.snapshot(files)
            except OSError as exc:  # keyed state written to checkpoint_dir/shared
                where = exc.filename if isinstance(exc.filename, str) else str(files.directory)
                msg = (
                    f"{part.label}: checkpoint {checkpoint_id} could not be written: writing {where} failed: "
                    f"{exc.strerror or exc}. Free space on that disk or make {self.store.directory} writable (or "
                    "point checkpoint_dir elsewhere); the flow resumes from the last complete checkpoint when "
                    "restarted."
                )
                raise CheckpointError(msg) from exc
            if state is not None:
                frames, objects = state
                snaps[part.name] = OperatorSnapshot(
                    part.kind, _normal(part.signature()), frames, objects, files.referenced
                )
        meta = {"flow": self.flow, "created_ms": self.clock.now_ns() // 1_000_000, "finished": final}
        written = self.store.write(checkpoint_id, meta, snaps)
        for sink in self.sinks:
            sink.commit(checkpoint_id)
        for part in self.participants:
            part.checkpoint_done(checkpoint_id)
        self.next_id += 1
        self.count += 1
        self.last_ns = self.clock.now_ns()
        self.last_duration_ms = (time.perf_counter() - started) * 1000
        size = sum(f.stat().st_size for f in written.iterdir() if f.is_file())
        shared = [self.store.shared_dir / name for snap in snaps.values() for name in snap.shared]
        size += sum(path.stat().st_size for path in shared if path.is_file())  # RocksDB files it refers to
        self.stats.completed(
            duration_ms=self.last_duration_ms, size_bytes=size, now_ns=time.time_ns(), checkpoint_id=checkpoint_id
        )
        # The first, the last, and then one a minute at INFO (one a second would drown the log).
        loud = final or self.count == 1 or time.monotonic() - self._logged_at >= 60
        if loud:
            self._logged_at = time.monotonic()
        log.log(
            logging.INFO if loud else logging.DEBUG,
            "checkpoint flow=%s id=%d ms=%.1f bytes=%d final=%s",
            self.flow,
            checkpoint_id,
            self.last_duration_ms,
            size,
            final,
        )
        return checkpoint_id
