"""The operator interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import polars as pl

from rheon.core.batch import Batch
from rheon.core.deadletters import dead_letter_frame
from rheon.core.errors import FlowError
from rheon.core.metrics import StateSize
from rheon.state.inspect import keyed_frame
from rheon.state.service import KeyedService
from rheon.state.shared import SharedFiles

__all__ = ["DEAD", "LATE", "MAIN", "Operator", "Output", "State"]

MAIN = "main"
LATE = "late"
DEAD = "dead"

Output = tuple[str, Batch]
State = tuple[dict[str, pl.DataFrame], dict[str, Any]]


class Operator(ABC):
    """One step of a running flow.

    ``process`` is called with each batch that arrives on an input port and returns what the
    step emits. Empty batches still carry watermark progress and must be answered (usually by an
    empty batch with the same watermark) so that downstream windows can fire.
    """

    kind = "operator"
    stateful = False
    """Whether :meth:`snapshot` has state to save in checkpoints."""
    ticking = False
    """Whether :meth:`on_tick` must be called as processing time passes."""
    first_error: BaseException | None = None
    """The first exception a user function raised in this operator (its record went to the dead
    letters); the flow's error-rate limit re-raises with its traceback."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def label(self) -> str:
        """How errors name this operator: ``"window 'per_card'"``."""
        return f"{self.kind} '{self.name}'"

    @abstractmethod
    def process(self, port: int, batch: Batch) -> list[Output]:
        """Handle one batch from input ``port``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources at the end of a run."""

    def on_tick(self, now_ns: int, like: Batch) -> list[Output]:
        """Processing time has reached ``now_ns``: emit what depends on it (processing-time timers)."""
        return []

    # -- checkpoints -------------------------------------------------------------------------

    def signature(self) -> dict[str, Any]:
        """What must stay the same for this operator's checkpointed state to be restored."""
        return {"kind": self.kind}

    def snapshot(self, files: SharedFiles) -> State | None:
        """The operator's state as ``(frames, objects)``, or ``None`` if it keeps none."""
        return None

    def restore(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any], files: SharedFiles) -> None:
        """Load state written by :meth:`snapshot`."""
        msg = f"{self.label} keeps no state and cannot restore any"
        raise FlowError(msg)

    def checkpoint_done(self, checkpoint_id: int) -> None:  # noqa: B027 - optional hook
        """Checkpoint ``checkpoint_id`` is complete."""

    def state_table(self) -> pl.DataFrame | None:
        """The operator's state now, as a table (called between batches); ``None``: it keeps none.

        Operators that keep keyed state in ``self.keyed`` show one row per key (``key``,
        ``key_group``, then one column per state cell).
        """
        keyed = getattr(self, "keyed", None)
        if isinstance(keyed, KeyedService):
            return keyed_frame(keyed.backend.items(), timestamps=self.kind == "process")
        return None

    def state_size(self) -> StateSize | None:
        """How much state the operator holds now (``None``: none, or it cannot tell).

        Operators that keep keyed state in ``self.keyed`` (a
        :class:`~rheon.state.service.KeyedService`) report its keys and timers.
        """
        keyed = getattr(self, "keyed", None)
        return keyed.size() if isinstance(keyed, KeyedService) else None

    def dead(self, reasons: str | Sequence[str], payloads: Sequence[str], like: Batch) -> Output:
        """A dead-letter output naming this operator."""
        frame = dead_letter_frame(self.label, reasons, payloads)
        return DEAD, Batch(frame, watermark=like.watermark, ingest_ns=like.ingest_ns)

    @staticmethod
    def empty_like(batch: Batch, frame: pl.DataFrame | None = None) -> Batch:
        """An empty batch carrying ``batch``'s progress."""
        return Batch(
            frame if frame is not None else pl.DataFrame(),
            watermark=batch.watermark,
            ingest_ns=batch.ingest_ns,
            idle=batch.idle,
            end=batch.end,
        )
