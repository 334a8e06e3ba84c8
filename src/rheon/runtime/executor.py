"""The run loop: poll sources, push batches through the operators, stop cleanly.

One thread runs the whole flow. Each turn of the loop asks every live source for what it has
now and pushes each batch depth-first through the plan, so a record reaches its sinks before the
next batch is read (no queues, no hidden buffering). When no source has data the loop sleeps for
as long as the sources say (capped), which keeps latency low at low rates without spinning.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import polars as pl

from rheon.core.batch import MAX_WM, MIN_WM, RAW_COL, SPLIT_COL, WM_COL, Batch
from rheon.core.columns import ColumnTypes
from rheon.core.deadletters import dead_letter_frame, payloads_of
from rheon.core.errors import FlowError, RecordError
from rheon.core.eventtime import TimeType, time_type_of
from rheon.core.metrics import ErrorRate, MetricsRegistry, OperatorStats
from rheon.io.base import BuildContext, SourceLogic
from rheon.io.show import Show
from rheon.operators.base import DEAD, LATE, MAIN, Operator
from rheon.operators.rowfn import RowFnChain
from rheon.operators.sink import SinkOperator
from rheon.operators.stateless import ExprChain, ExprOperator
from rheon.runtime.build import build_operator
from rheon.runtime.checkpointing import CheckpointCoordinator, CheckpointSettings
from rheon.runtime.graph import Node
from rheon.runtime.plan import OpGroup, Plan
from rheon.runtime.progress import ProgressLine
from rheon.runtime.prometheus import MetricsServer
from rheon.runtime.specs import DeadLettersSpec, RowSpec, SinkSpec, SourceSpec
from rheon.runtime.stats import RunStats
from rheon.runtime.ui import Dashboard, DashboardSource
from rheon.state.shared import SharedFiles
from rheon.time.clock import Clock
from rheon.time.column import EventTimeColumn
from rheon.time.watermarks import SplitWatermarks, WatermarkTracker

__all__ = ["Executor"]

log = logging.getLogger(__name__)

_MAX_SLEEP_S = 0.05
_UNKNOWN_WAIT_S = 0.002
_KEEP_DEAD = 1_000
_GAUGES_NS = 1_000_000_000  # state sizes and backlog are refreshed about once a second
_TICK_S = 0.01  # processing-time timers fire within ~10 ms of their time


@dataclass(eq=False)
class _SourceTask:
    node: Node
    logic: SourceLogic
    stats: OperatorStats
    tracker: WatermarkTracker | None
    needs_wm: bool
    time_col: EventTimeColumn | None = None
    """The event-time column: its type once known, and the records that cannot have one."""
    last_data_ns: int = 0
    next_read_ns: int = 0
    """Not read again before this (``SourceLogic.min_batch_interval_ns`` after a read that gave data)."""
    idle: bool = False
    ended: bool = False
    splits: SplitWatermarks | None = None
    columns: ColumnTypes | None = None
    """The source's columns in first-seen order, each with the type it first had."""

    @property
    def spec(self) -> SourceSpec:
        assert isinstance(self.node.spec, SourceSpec)
        return self.node.spec

    @property
    def time_type(self) -> TimeType | None:
        return self.time_col.time_type if self.time_col is not None else None

    # -- as a checkpoint participant (runtime/checkpointing.py) ---------------------------------

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def label(self) -> str:
        return self.node.label

    kind = "source"
    stateful = True

    def signature(self) -> dict[str, Any]:
        return {"kind": "source", "source": type(self.spec.source).__name__, "time": self.node.time}

    def snapshot(self, files: SharedFiles) -> tuple[dict[str, pl.DataFrame], dict[str, Any]]:
        """The read position, the watermark's progress and the column types learned so far."""
        return {}, {
            "position": self.logic.snapshot(),
            "max_ts": self.tracker.max_ts if self.tracker is not None else None,
            "split_max_ts": dict(self.splits.max_ts) if self.splits is not None else None,
            "time_type": self.time_type,
            "columns": self.columns.snapshot() if self.columns is not None else None,
            "ended": self.ended,
            "stats": (self.stats.rows_in, self.stats.rows_out),
        }

    def restore(self, frames: dict[str, pl.DataFrame], saved: dict[str, Any], files: SharedFiles) -> None:
        self.ended = bool(saved["ended"])
        if self.columns is not None:
            self.columns.restore(saved.get("columns"))
        if not self.ended:
            self.logic.restore(saved["position"])
        if self.tracker is not None and saved["max_ts"] is not None:
            self.tracker.max_ts = saved["max_ts"]
        if self.tracker is not None and saved.get("split_max_ts") is not None:
            self.splits = SplitWatermarks(self.tracker.max_delay)
            self.splits.max_ts = dict(saved["split_max_ts"])
            self.splits.registered = set(self.splits.max_ts)
        if saved["time_type"] is not None and self.time_col is not None:
            self.time_col.time_type = saved["time_type"]
            if self.tracker is not None:
                self.tracker.max_delay = saved["time_type"].ticks(self.spec.max_delay_ms)
                if self.splits is not None:
                    self.splits.max_delay = self.tracker.max_delay

    def checkpoint_done(self, checkpoint_id: int) -> None:
        self.logic.checkpoint_done(checkpoint_id)

    @property
    def watermark(self) -> int:
        if self.splits is not None:
            return self.splits.watermark
        return self.tracker.watermark if self.tracker is not None else MIN_WM


class _PassThrough(Operator):
    """The dead-letter stream's own node: forwards what it is given."""

    kind = "dead_letters"

    def process(self, port: int, batch: Batch) -> list[tuple[str, Batch]]:
        return [("main", batch)]


class Executor:
    """Runs one plan once."""

    def __init__(
        self,
        plan: Plan,
        *,
        clock: Clock,
        on_error: str,
        stop: threading.Event,
        max_error_rate: float | None = None,
        duration_ms: int | None = None,
        drain: bool = False,
        checkpoints: CheckpointSettings | None = None,
        state_backend: str = "memory",
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        progress: bool = False,
        ui_port: int | None = None,
        ui_host: str = "127.0.0.1",
        ui_token: str | None = None,
    ) -> None:
        self.plan = plan
        self.ui_port, self.ui_host, self.ui_token = ui_port, ui_host, ui_token
        self.dashboard: Dashboard | None = None
        self.latest_dead: deque[dict[str, Any]] = deque(maxlen=_KEEP_DEAD)
        """The latest dead letters, whoever consumes them (the dashboard shows them)."""
        self.progress = progress
        self.progress_line: ProgressLine | None = None
        self._state_requests: queue.SimpleQueue[tuple[int, Future[pl.DataFrame]]] = queue.SimpleQueue()
        self._loop_thread: threading.Thread | None = None
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.metrics_server: MetricsServer | None = None
        self.state_backend = state_backend
        self.checkpoint_settings = checkpoints
        self.coordinator: CheckpointCoordinator | None = None
        self.clock = clock
        self.on_error = on_error
        self.error_rates: list[ErrorRate] = []
        self.max_error_rate = max_error_rate
        self.stop_event = stop
        self.wake_event = threading.Event()
        """Set by sources when data arrives (``BuildContext.wake``) and by :meth:`wake`: the loop's
        sleep ends at once."""
        self.duration_ms = duration_ms
        self.drain = drain
        self.metrics = MetricsRegistry(plan.graph.name)
        """Every measurement of this run (``flow.metrics()`` and the Prometheus endpoint read it)."""
        self._gauges_ns = 0
        self.started_ns = 0
        self.finished_ns = 0
        self.running = False
        self.unhandled: deque[dict[str, Any]] = deque(maxlen=_KEEP_DEAD)
        self.dead_total = 0
        self.late_total = 0
        self.dropped_late: dict[int, int] = {}
        """Late rows per operator (by index) that no ``.late()`` consumer took: logged, counted."""
        self.sources: list[_SourceTask] = []
        self.ops: list[Operator] = []
        self.op_stats: list[OperatorStats] = []
        self.out_times: list[TimeType | None] = []
        """Each operator's output time type, as far as known (its watermark is in its ticks)."""
        self._time_owners: dict[int, _SourceTask | int] = {}
        """Node id → the source task or the operator (index) whose output it is."""
        self.ticking = False

    # -- building ---------------------------------------------------------------------------

    def _ctx(self, node: Node) -> BuildContext:
        state_dir = None
        if self.checkpoint_settings is not None:
            state_dir = self.checkpoint_settings.directory / "work" / node.name
        return BuildContext(
            flow=self.plan.graph.name,
            operator=node.name,
            clock=self.clock,
            stop=self.stop_event,
            wake=self.wake_event,
            state_backend=self.state_backend,
            state_dir=state_dir,
            checkpointing=self.checkpoint_settings is not None,
            event_time=node.time if node.kind == "source" else None,
        )

    def _build_group(self, group: OpGroup, stats: OperatorStats) -> Operator:
        head = group.head
        if isinstance(head.spec, RowSpec):
            return RowFnChain([n.spec.step for n in group.nodes if isinstance(n.spec, RowSpec)])
        if len(group.nodes) > 1:  # expression steps (plan.FUSED)
            steps = [build_operator(n, self._ctx(n)) for n in group.nodes]
            return ExprChain([step for step in steps if isinstance(step, ExprOperator)])
        if isinstance(head.spec, SinkSpec):
            logic = head.spec.sink.build(self._ctx(head))
            return SinkOperator(head.name, logic, len(head.inputs), self.clock, stats.latency)
        if isinstance(head.spec, DeadLettersSpec):
            return _PassThrough(head.name)
        return build_operator(head, self._ctx(head))

    def _build(self) -> None:
        for node in self.plan.sources:
            assert isinstance(node.spec, SourceSpec)
            logic = node.spec.source.build(self._ctx(node))
            tracker = None
            if node.time is not None:
                tracker = WatermarkTracker(0)
            self.sources.append(
                _SourceTask(
                    node,
                    logic,
                    self.metrics.part(node.label, "source"),
                    tracker,
                    needs_wm=node.id in self.plan.needs_wm,
                    time_col=(
                        EventTimeColumn(node.time, where=node.label, expr=node.spec.time_expr, time_type=node.time_type)
                        if node.time is not None
                        else None
                    ),
                    columns=ColumnTypes(
                        None,
                        where=node.label,
                        passthrough={SPLIT_COL, RAW_COL},
                        untyped={node.time} if node.time is not None else (),
                    ),
                )
            )
            if node.time_type is not None and tracker is not None:
                tracker.max_delay = node.time_type.ticks(node.spec.max_delay_ms)
        for group in self.plan.groups:
            stats = self.metrics.part(group.label, "sink" if isinstance(group.head.spec, SinkSpec) else "operator")
            self.ops.append(self._build_group(group, stats))
            self.op_stats.append(stats)
            self.error_rates.append(ErrorRate())
        self.out_times = [group.tail.time_type for group in self.plan.groups]
        self._time_owners = {task.node.id: task for task in self.sources}
        self._time_owners.update({group.tail.id: index for index, group in enumerate(self.plan.groups)})
        self.ticking = any(op.ticking for op in self.ops)

    # -- routing ----------------------------------------------------------------------------

    def _push(self, node_id: int, tag: str, batch: Batch) -> None:
        for index, port in self.plan.routes.get((node_id, tag), ()):
            self._deliver(index, port, batch)

    def _deliver(self, index: int, port: int, batch: Batch) -> None:
        op = self.ops[index]
        stats = self.op_stats[index]
        stats.rows_in += batch.frame.height
        stats.batches += 1
        t0 = time.perf_counter_ns()
        outputs = op.process(port, batch)
        stats.busy_ns += time.perf_counter_ns() - t0
        self._route(index, outputs)
        if self.max_error_rate is not None and stats.role == "operator":
            failed = [out.frame for tag, out in outputs if tag == DEAD and out.frame.height]
            self._check_error_rate(index, batch.frame.height, failed)

    def _route(self, index: int, outputs: list[tuple[str, Batch]]) -> None:
        stats = self.op_stats[index]
        tail_id = self.plan.groups[index].tail.id
        for tag, out in outputs:
            if tag == DEAD:
                stats.dead_letters += out.frame.height
                self._dead(out)
                continue
            if tag == LATE:
                stats.late_rows += out.frame.height
                self.late_total += out.frame.height
                if out.frame.height and (tail_id, LATE) not in self.plan.routes:
                    self._drop_late(index, out.frame.height)
                    continue
            else:
                stats.rows_out += out.frame.height
                if tag == MAIN and MIN_WM < out.watermark < MAX_WM and stats.role == "operator":
                    self._note_watermark(index, out)
            self._push(tail_id, tag, out)

    def _note_watermark(self, index: int, out: Batch) -> None:
        """An operator's output watermark into its counters, in epoch ms (for the metrics)."""
        ttype = self.out_times[index]
        if ttype is None:
            ttype = self._learn_time(index, out.frame)
        if ttype is not None:
            self.op_stats[index].watermark_ms = ttype.to_ms(out.watermark)

    def _learn_time(self, index: int, frame: pl.DataFrame) -> TimeType | None:
        """The time type of an operator's output: its time column's, once a batch shows it; until
        then its input's (the same unit: a window's bounds, a join's or a match's times have the
        type of the time they come from), except for ``with_time``, which may read another column."""
        group = self.plan.groups[index]
        column = group.tail.time
        if column is not None and column in frame.columns:
            with contextlib.suppress(FlowError):
                self.out_times[index] = time_type_of(frame.schema[column], column=column, where=group.label)
                return self.out_times[index]
        if group.head.kind == "with_time":
            return None
        for edge in group.head.inputs:
            owner = self._time_owners.get(edge.node.id)
            if isinstance(owner, _SourceTask):
                found = owner.time_type
            elif owner is not None and owner != index:
                found = self.out_times[owner] or self._learn_time(owner, pl.DataFrame())
            else:
                found = None
            if found is not None:
                return found
        return None

    def _check_error_rate(self, index: int, rows: int, failed: list[pl.DataFrame]) -> None:
        """Stop the run when an operator's records fail more often than ``max_error_rate``."""
        rate = self.error_rates[index]
        rate.add(rows, sum(f.height for f in failed), failed[0].row(0) if failed else None)
        assert self.max_error_rate is not None
        if not rate.over(self.max_error_rate):
            return
        operator, reason, payload = rate.first or ("", "", "")
        msg = (
            f"{self.plan.groups[index].label}: {rate.failed} of its last {rate.rows} records failed, more than "
            f"max_error_rate={self.max_error_rate:g} allows; the first: {reason} (record: {payload:.200}). "
            "Fix the function (the traceback is the first failure's), or raise or turn off the limit: "
            "rh.Flow(..., max_error_rate=None)"
        )
        raise RecordError(msg, operator=operator, payload=payload) from self.ops[index].first_error

    def _drop_late(self, index: int, rows: int) -> None:
        """Late rows of an operator whose ``.late()`` nobody consumes: never dropped silently.

        The first ones of each operator are logged at once; the total is logged when the run
        ends (:meth:`_log_dropped_late`), so a big batch of late rows makes two lines, not one
        per row.
        """
        before = self.dropped_late.get(index, 0)
        self.dropped_late[index] = before + rows
        if before == 0:
            log.warning(
                "late_rows operator=%s rows=%d dropped: nothing consumes its .late() (consume stream.late() "
                "to keep them; the total is logged when the run ends)",
                self.plan.groups[index].label,
                rows,
            )

    def _log_dropped_late(self) -> None:
        """Log, per operator, how many late rows went unconsumed during the run."""
        for index, rows in self.dropped_late.items():
            log.warning(
                "late_rows operator=%s total=%d late row%s dropped: nothing consumed its .late() "
                "(consume stream.late() to keep them)",
                self.plan.groups[index].label,
                rows,
                "" if rows == 1 else "s",
            )

    def _tick(self, now_ns: int) -> None:
        """Let operators that depend on processing time (timers) act on it."""
        for index, op in enumerate(self.ops):
            if not op.ticking:
                continue
            outputs = op.on_tick(now_ns, Batch(pl.DataFrame(), watermark=MIN_WM, ingest_ns=now_ns))
            if outputs:
                self._route(index, outputs)

    def _dead(self, batch: Batch) -> None:
        frame = batch.frame
        if frame.height == 0:
            return
        self.dead_total += frame.height
        self.latest_dead.extend(frame.tail(100).to_dicts())
        for (operator, reason), n in Counter(
            zip(frame.get_column("operator"), frame.get_column("reason"), strict=True)
        ).items():
            self.metrics.count_dead(operator, reason, n)
        if self.on_error == "fail":
            operator, reason, payload = frame.row(0)
            msg = f"{operator}: {reason} (record: {payload})"
            raise RecordError(msg, operator=operator, payload=payload)
        if self.on_error == "skip":
            return
        if self.plan.dead_letter_groups:
            for index in self.plan.dead_letter_groups:
                self._deliver(index, 0, Batch(frame, watermark=MIN_WM, ingest_ns=batch.ingest_ns))
            return
        rows = frame.to_dicts()
        if len(self.unhandled) < 3:
            for row in rows[: 3 - len(self.unhandled)]:
                log.warning(
                    "dead_letter operator=%s reason=%r payload=%.200s (consume flow.dead_letters() to keep them all)",
                    row["operator"],
                    row["reason"],
                    row["payload"],
                )
        self.unhandled.extend(rows)

    # -- sources ----------------------------------------------------------------------------

    def _resolve_time(self, task: _SourceTask, frame: pl.DataFrame) -> pl.DataFrame:
        """The batch with its event-time column computed and typed; records that cannot have an
        event time become dead letters (:class:`~rheon.time.column.EventTimeColumn`)."""
        assert task.time_col is not None
        assert task.tracker is not None
        known = task.time_col.time_type is not None
        frame, rejected = task.time_col.resolve(frame)
        for reasons, rows in rejected:
            self._dead(Batch(dead_letter_frame(task.node.label, reasons, payloads_of(rows))))
            task.stats.dead_letters += rows.height
        if not known and task.time_col.time_type is not None:
            task.tracker.max_delay = task.time_col.time_type.ticks(task.spec.max_delay_ms)
        return frame

    def _conform(self, task: _SourceTask, frame: pl.DataFrame) -> pl.DataFrame:
        """The batch's columns in the source's order and types; records with a field of another
        type than it had so far become dead letters (a batch from one file or request may differ
        from the last: a field missing, new, or of a new type)."""
        assert task.columns is not None
        if frame.height == 0:
            return frame
        good, bad, reasons = task.columns.conform(frame)
        if bad is not None:
            self._dead(Batch(dead_letter_frame(task.node.label, reasons, payloads_of(frame.filter(bad)))))
            task.stats.dead_letters += len(reasons)
        return good

    def _source_batch(self, task: _SourceTask, frame: pl.DataFrame, now_ns: int) -> None:
        node = task.node
        task.stats.rows_in += frame.height
        task.stats.batches += 1
        column = node.time
        if column is not None and task.tracker is not None and frame.height:
            frame = self._conform(task, self._resolve_time(task, frame))
            if column in frame.columns:
                ticks = frame.get_column(column).cast(pl.Int64)
                if SPLIT_COL in frame.columns:
                    splits = self._splits(task, now_ns)
                    pre = splits.assign(ticks, frame.get_column(SPLIT_COL), now_ns)
                    if task.needs_wm:
                        frame = _with_watermarks(frame, pre)
                elif task.needs_wm:
                    frame = _with_watermarks(frame, task.tracker.assign(ticks))
                else:
                    task.tracker.observe(ticks)
        elif frame.height:
            frame = self._conform(task, frame)
        hidden = [c for c in (SPLIT_COL, RAW_COL) if c in frame.columns]
        if hidden:
            frame = frame.drop(hidden)
        watermark = task.watermark
        if task.time_type is not None and MIN_WM < watermark < MAX_WM:
            self.metrics.watermarks[node.label] = task.time_type.to_ms(watermark)
        ingest = task.logic.last_ingest_ns or now_ns
        task.logic.last_ingest_ns = None
        task.stats.rows_out += frame.height
        self._push(node.id, "main", Batch(frame, watermark=watermark, ingest_ns=ingest))

    def _splits(self, task: _SourceTask, now_ns: int) -> SplitWatermarks:
        """The per-split watermarks of a source, registering the splits it now reads."""
        if task.splits is None:
            assert task.tracker is not None
            task.splits = SplitWatermarks(task.tracker.max_delay)
        current = task.logic.splits()
        if current is not None:
            known = set(task.splits.max_ts)
            for split in current:
                task.splits.add(split, now_ns)
            for gone in known - set(current):
                task.splits.remove(gone)
        return task.splits

    def _source_dead(self, task: _SourceTask) -> None:
        letters = task.logic.take_dead_letters()
        if letters:
            task.stats.dead_letters += len(letters)
            frame = dead_letter_frame(task.node.label, [r for r, _ in letters], [p for _, p in letters])
            self._dead(Batch(frame))

    def _end_source(self, task: _SourceTask) -> None:
        task.ended = True
        self._push(task.node.id, "main", Batch(pl.DataFrame(), watermark=MAX_WM, end=True))

    def _check_idle_splits(self, task: _SourceTask, now_ns: int) -> bool:
        """Mark the source's partitions quiet for ``idle_timeout`` as idle; True if any went idle."""
        timeout = task.spec.idle_timeout_ms
        if timeout is None or task.splits is None:
            return False
        return task.splits.check_idle(now_ns, timeout * 1_000_000)

    def _check_idle(self, task: _SourceTask, now_ns: int) -> None:
        timeout = task.spec.idle_timeout_ms
        if timeout is None or task.idle or task.tracker is None:
            return
        if self._check_idle_splits(task, now_ns):
            # Some partitions went quiet: the others' watermark may move on.
            self._push(task.node.id, "main", Batch(pl.DataFrame(), watermark=task.watermark))
        if now_ns - task.last_data_ns >= timeout * 1_000_000:
            task.idle = True
            log.info("source_idle source=%s idle_ms=%d", task.node.name, timeout)
            self._push(task.node.id, "main", Batch(pl.DataFrame(), watermark=task.watermark, idle=True))

    # -- the loop ---------------------------------------------------------------------------

    def _deadline_ns(self) -> int | None:
        if self.duration_ms is None:
            return None
        return self.started_ns + self.duration_ms * 1_000_000

    def run(self, on_start: Callable[[Executor], None] | None = None) -> RunStats:
        """Run until every source is exhausted, the duration passes, or stop is requested."""
        try:
            self._build()
            if self.ui_port is not None:
                self.dashboard = Dashboard(
                    self._dashboard_source(), port=self.ui_port, host=self.ui_host, token=self.ui_token
                )
            if self.metrics_port is not None:
                self.metrics_server = MetricsServer(
                    self.metrics, running=lambda: self.running, port=self.metrics_port, host=self.metrics_host
                )
            if self.checkpoint_settings is not None:
                self.coordinator = CheckpointCoordinator(
                    self.checkpoint_settings,
                    flow=self.plan.graph.name,
                    clock=self.clock,
                    participants=[*self.sources, *self.ops],
                    sinks=[op.logic for op in self.ops if isinstance(op, SinkOperator)],
                    stats=self.metrics.checkpoints,
                )
                self.coordinator.restore()
        except BaseException:
            # Whatever was built (a listening server, a consumer) must not outlive the failure.
            with contextlib.suppress(Exception):
                self._close()
            raise
        self.started_ns = self.clock.now_ns()
        for task in self.sources:
            task.last_data_ns = self.started_ns
        self.running = True
        log.info(
            "run_started flow=%s sources=%d operators=%d checkpoints=%s",
            self.plan.graph.name,
            len(self.sources),
            len(self.ops),
            self.checkpoint_settings.directory if self.checkpoint_settings is not None else None,
        )
        self._loop_thread = threading.current_thread()
        if self.progress:
            self.progress_line = ProgressLine(self.metrics)
        if on_start is not None:
            on_start(self)
        deadline = self._deadline_ns()
        coordinator = self.coordinator
        ended = "failed"
        try:
            while True:
                self.wake_event.clear()  # data that arrives from here on wakes the sleep below
                progressed = False
                waits: list[float] = []
                for task in self.sources:
                    if task.ended:
                        continue
                    read_ns = self.clock.now_ns()
                    if read_ns < task.next_read_ns:  # read again once its batch interval has passed
                        waits.append((task.next_read_ns - read_ns) / 1e9)
                        continue
                    frame = task.logic.next_batch()
                    self._source_dead(task)
                    now = self.clock.now_ns()
                    if frame is not None:
                        progressed = True
                        if frame.height:
                            task.last_data_ns = now
                            task.idle = False
                            task.next_read_ns = read_ns + task.logic.min_batch_interval_ns
                        # A busy partition must not keep a quiet one counting: check the
                        # partitions on every batch, not only when the whole source is quiet.
                        self._check_idle_splits(task, now)
                        self._source_batch(task, frame, now)
                    elif task.logic.done():
                        self._end_source(task)
                        progressed = True
                    else:
                        self._check_idle(task, now)
                        hint = task.logic.wait_hint_s()
                        if hint is None:
                            hint = _MAX_SLEEP_S if task.logic.wakes_loop else _UNKNOWN_WAIT_S
                        waits.append(hint)
                if all(t.ended for t in self.sources):
                    self._end_dead_letters()
                    ended = "input_ended"
                    break
                if self.stop_event.is_set() or (deadline is not None and self.clock.now_ns() >= deadline):
                    ended = "stopped" if self.stop_event.is_set() else "duration"
                    if self.drain:
                        for task in self.sources:
                            if not task.ended:
                                self._end_source(task)
                        self._end_dead_letters()
                    break
                if self.ticking:
                    self._tick(self.clock.now_ns())
                self._refresh_gauges()
                self._serve_state_requests()
                if coordinator is not None and coordinator.due(self.clock.now_ns()):
                    coordinator.checkpoint()
                if not progressed:
                    wait = min(waits) if waits else _UNKNOWN_WAIT_S
                    if deadline is not None:
                        wait = min(wait, max(0.0, (deadline - self.clock.now_ns()) / 1e9))
                    for task in self.sources:
                        if task.spec.idle_timeout_ms is not None and not task.idle:
                            left = task.last_data_ns + task.spec.idle_timeout_ms * 1_000_000 - self.clock.now_ns()
                            wait = min(wait, max(0.0, left / 1e9))
                    if coordinator is not None:
                        wait = min(wait, coordinator.seconds_until_due(self.clock.now_ns()))
                    if self.ticking:
                        wait = min(wait, _TICK_S)
                    if not self.stop_event.is_set():
                        self.clock.sleep(min(wait, _MAX_SLEEP_S), self.wake_event)
            # The run ended normally (input exhausted, or stopped between batches): make the
            # output final. With checkpoints, a last checkpoint lets a restart resume exactly here.
            if coordinator is not None:
                coordinator.checkpoint(final=all(t.ended for t in self.sources))
            else:
                for op in self.ops:
                    if isinstance(op, SinkOperator):
                        op.logic.flush()
            for task in self.sources:
                task.logic.run_finished()
            self._refresh_gauges(now=True)  # the final figures
        except BaseException as exc:
            log.error("run_failed flow=%s error=%r", self.plan.graph.name, f"{type(exc).__name__}: {exc}"[:500])
            raise
        finally:
            self.running = False
            self._serve_state_requests()  # asked while the loop was ending
            self.finished_ns = self.clock.now_ns()
            if self.progress_line is not None:
                self.progress_line.stop()
            self._log_dropped_late()
            self._close()
        stats = self.stats()
        log.info(
            "run_ended flow=%s reason=%s records_in=%d records_out=%d late=%d dead_letters=%d checkpoints=%d elapsed_s=%.3f",
            stats.flow,
            ended,
            stats.records_in,
            stats.records_out,
            stats.late_rows,
            stats.dead_letters,
            stats.checkpoints,
            stats.elapsed_s,
        )
        return stats

    # -- the dashboard ------------------------------------------------------------------------

    def _dashboard_source(self) -> DashboardSource:
        """The plan's graph and the run's live data, for the web dashboard."""
        names = {node.id: node.name for node in self.plan.graph.nodes}
        nodes = [
            {
                "id": task.node.name,
                "label": task.node.label,
                "kind": "source",
                "role": "source",
                "describe": task.spec.describe(),
            }
            for task in self.sources
        ]
        shown: list[Show] = []
        for group, stats in zip(self.plan.groups, self.op_stats, strict=True):
            spec = group.head.spec
            nodes.append(
                {
                    "id": group.tail.name,
                    "label": group.label,
                    "kind": group.head.kind if len(group.nodes) == 1 else "chain",
                    "role": stats.role,
                    "describe": spec.describe() if len(group.nodes) == 1 else "",
                }
            )
            if isinstance(spec, SinkSpec) and isinstance(spec.sink, Show):
                shown.append(spec.sink)
        edges = [
            {"from": names[tail_id], "to": self.plan.groups[index].tail.name, "tag": tag}
            for (tail_id, tag), targets in self.plan.routes.items()
            for index, _ in targets
        ]
        return DashboardSource(
            self.plan.graph.name, nodes, edges, self.metrics, self.latest_dead, shown, lambda: self.running
        )

    # -- state inspection -------------------------------------------------------------------

    def state_of(self, name: str, timeout_s: float = 60.0) -> pl.DataFrame:
        """The state of operator ``name`` as a table: taken by the run loop between two batches
        when the flow is running (a consistent snapshot), directly otherwise."""
        names = {g.tail.name: i for i, g in enumerate(self.plan.groups)}
        names.update({g.head.name: i for i, g in enumerate(self.plan.groups)})
        if name not in names:
            known = ", ".join(g.tail.name for g, op in zip(self.plan.groups, self.ops, strict=False))
            msg = f"flow '{self.plan.graph.name}' has no operator '{name}' (operators: {known})"
            raise FlowError(msg)
        index = names[name]
        if not self.running or threading.current_thread() is self._loop_thread:
            return self._state_table(index)
        request: Future[pl.DataFrame] = Future()
        self._state_requests.put((index, request))
        if not self.running:  # it ended meanwhile: nobody else will answer
            self._serve_state_requests()
        return request.result(timeout=timeout_s)

    def _state_table(self, index: int) -> pl.DataFrame:
        if index >= len(self.ops):
            msg = f"{self.plan.groups[index].label}: the flow has not started yet"
            raise FlowError(msg)
        table = self.ops[index].state_table()
        if table is None:
            msg = f"{self.plan.groups[index].label} keeps no state"
            raise FlowError(msg)
        return table

    def _serve_state_requests(self) -> None:
        while not self._state_requests.empty():
            index, request = self._state_requests.get()
            if request.done():
                continue
            try:
                request.set_result(self._state_table(index))
            except Exception as exc:
                request.set_exception(exc)

    def _refresh_gauges(self, *, now: bool = False) -> None:
        """About once a second (or ``now``), between batches: state sizes, sink health and source
        backlog into the registry."""
        at = time.monotonic_ns()
        if not now and at - self._gauges_ns < _GAUGES_NS:
            return
        self._gauges_ns = at
        for group, op in zip(self.plan.groups, self.ops, strict=True):
            size = op.state_size()
            if size is not None:
                self.metrics.state[group.label] = size
        for group, op in zip(self.plan.groups, self.ops, strict=True):
            if isinstance(op, SinkOperator):
                health = op.logic.health()
                if health is not None:
                    self.metrics.sinks[group.label] = health
        for task in self.sources:
            backlog = task.logic.backlog()
            if backlog is not None:
                for (split, unit), amount in backlog.items():
                    self.metrics.backlog[(task.node.label, split, unit)] = amount

    def _end_dead_letters(self) -> None:
        for index in self.plan.dead_letter_groups:
            self._deliver(index, 0, Batch(pl.DataFrame(), watermark=MAX_WM, end=True))

    def _close(self) -> None:
        errors: list[BaseException] = []
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.dashboard is not None:
            self.dashboard.close()
        for op in self.ops:
            try:
                op.close()
            except Exception as exc:
                errors.append(exc)
        for task in self.sources:
            try:
                task.logic.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- reporting ---------------------------------------------------------------------------

    def stats(self) -> RunStats:
        """A snapshot of the run's metrics (callable from another thread while running)."""
        end = self.clock.now_ns() if self.running else self.finished_ns
        sink_out = sum(
            s.rows_in for g, s in zip(self.plan.groups, self.op_stats, strict=False) if g.head.kind == "sink"
        )
        live = [t for t in self.sources if t.tracker is not None and not t.idle and not t.ended]
        watermark_ms = None
        if live and all(t.time_type is not None and t.watermark > MIN_WM for t in live):
            watermark_ms = min(t.time_type.to_ms(t.watermark) for t in live if t.time_type)
        lat = self.metrics.latency()
        return RunStats(
            flow=self.plan.graph.name,
            running=self.running,
            elapsed_s=max(end - self.started_ns, 0) / 1e9,
            records_in=sum(t.stats.rows_in for t in self.sources),
            records_out=sink_out,
            late_rows=self.late_total,
            dead_letters=self.dead_total,
            latency_p50_ms=lat.quantile(0.5) if lat.count else None,
            latency_p99_ms=lat.quantile(0.99) if lat.count else None,
            watermark_ms=watermark_ms,
            operators=[t.stats.as_dict() for t in self.sources] + [s.as_dict() for s in self.op_stats],
            unhandled_dead_letters=list(self.unhandled),
            checkpoints=self.coordinator.count if self.coordinator is not None else 0,
            restored_from=self.coordinator.restored_from if self.coordinator is not None else None,
            checkpoint_ms=self.coordinator.last_duration_ms if self.coordinator is not None else None,
            restore_ms=self.coordinator.restore_ms if self.coordinator is not None else None,
        )


def _with_watermarks(frame: pl.DataFrame, marks: pl.Series) -> pl.DataFrame:
    """``frame`` with the per-record watermarks as its hidden column: appended without a query
    (a query costs ~0.1-0.25 ms per batch whatever its size, a large part of a small batch)."""
    marks = marks.alias(WM_COL)
    return frame.with_columns(marks) if WM_COL in frame.columns else frame.hstack([marks])
