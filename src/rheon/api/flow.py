"""``rh.Flow``: a stream processing job, built from sources, operators and sinks, then run."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import polars as pl

from rheon.api.stream import Stream
from rheon.core.deadletters import DEAD_LETTER_SCHEMA
from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError
from rheon.io.base import Source
from rheon.runtime.checkpointing import CheckpointSettings
from rheon.runtime.executor import Executor
from rheon.runtime.graph import Graph, Node
from rheon.runtime.plan import make_plan
from rheon.runtime.specs import DeadLettersSpec, SourceSpec
from rheon.runtime.stats import RunStats
from rheon.state.backends import BACKENDS
from rheon.time.clock import Clock, SystemClock
from rheon.time.column import declared_time

__all__ = ["Flow", "Runner", "running_under"]

log = logging.getLogger(__name__)

_POLICIES = ("dead_letter", "fail", "skip")


class Flow:
    """A stream processing job: sources, the operators on their streams, and sinks.

    Parameters
    ----------
    name
        Names the flow in logs, metrics and errors.
    on_error
        What happens to a record that fails at run time (an exception in a user function, a
        missing event time, an undecodable line): ``"dead_letter"`` (default) sends it to
        :meth:`dead_letters` and counts it, ``"fail"`` stops the run with
        :class:`~rheon.RecordError`, ``"skip"`` only counts it.
    max_error_rate
        A guard for ``"dead_letter"`` and ``"skip"``: when more than this share of an
        operator's records fail (over its last 1,000 records, once it has had 100), the run stops
        with :class:`~rheon.RecordError` carrying the first failure's traceback: a function that
        fails on every record is a bug to fix, not data to set aside. ``None`` turns it off.
        Sources (undecodable input) and sinks (an endpoint down) do not count.
    checkpoint_dir, checkpoint_every
        Defaults for :meth:`run`: where to keep checkpoints (none by default) and how often.
    state_backend
        Where keyed state of process functions and reduce lives: ``"memory"`` (default; a dict,
        with incremental checkpoints) or ``"rocksdb"`` (on disk, for state larger than memory;
        ``pip install 'rheon[rocksdb]'``).

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"card": "a", "amount": 1200, "ts": 0}, {"card": "a", "amount": 30, "ts": 500},
    ...         {"card": "b", "amount": 2500, "ts": 61_000}]
    >>> flow = rh.Flow("payments")
    >>> tx = flow.source(rh.io.Records(rows), time="ts", max_delay="2s")
    >>> out = rh.io.Collect()
    >>> tx.key_by("card").window(rh.tumbling("1m")).agg(n=rh.count(), total=rh.sum("amount")).sink(out)
    >>> flow.run()
    >>> flow.metrics().records_in
    3
    >>> out.rows
    [{'card': 'a', 'window_start': 0, 'window_end': 60000, 'n': 2, 'total': 1230}, {'card': 'b', 'window_start': 60000, 'window_end': 120000, 'n': 1, 'total': 2500}]
    """

    def __init__(
        self,
        name: str = "flow",
        *,
        on_error: str = "dead_letter",
        max_error_rate: float | None = 0.5,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: Duration = "1s",
        state_backend: str = "memory",
    ) -> None:
        if on_error not in _POLICIES:
            msg = f"Flow '{name}': on_error must be one of {', '.join(_POLICIES)} (got {on_error!r})"
            raise FlowError(msg)
        if max_error_rate is not None and not (
            isinstance(max_error_rate, int | float) and not isinstance(max_error_rate, bool) and 0 <= max_error_rate < 1
        ):
            msg = f"Flow '{name}': max_error_rate must be a share from 0 up to (not including) 1, or None (got {max_error_rate!r})"
            raise FlowError(msg)
        self.max_error_rate = max_error_rate
        self.name = name
        self.on_error = on_error
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        to_ms(checkpoint_every, what=f"Flow '{name}': checkpoint_every")
        if state_backend not in BACKENDS:
            msg = f"Flow '{name}': state_backend must be one of {', '.join(BACKENDS)} (got {state_backend!r})"
            raise FlowError(msg)
        self.state_backend = state_backend
        self.graph = Graph(name)
        self._dead_node: Node | None = None
        self._executor: Executor | None = None
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, {len(self.graph.nodes)} operators)"

    def source(
        self,
        source: Source,
        *,
        time: str | pl.Expr | None = None,
        max_delay: Duration = "0s",
        idle_timeout: Duration | None = None,
        name: str | None = None,
    ) -> Stream:
        """Add a source and return its stream.

        Parameters
        ----------
        source
            A source config, e.g. ``rh.io.Records(rows)`` or ``rh.io.Generator(fn, rate=100)``.
        time
            The event-time column: int64 epoch milliseconds or a Polars Datetime. Needed by
            windows. Or a Polars expression that computes it from each record, such as
            ``rh.col("when").str.to_datetime()``: its result replaces the column it is named
            after (``"when"`` here; ``.alias("ts")`` makes a new one). A record the expression
            fails on, or gives null for, goes to the dead letters with the value it read.
        max_delay
            How far out of order events may arrive. The watermark is the largest event time
            seen so far minus ``max_delay``.
        idle_timeout
            After this long without data the source stops holding back the watermark of the
            streams it is merged with; it counts again once data arrives.

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("s")
        >>> flow.source(rh.io.Records([{"ts": 0}]), time="tz")
        Traceback (most recent call last):
        ...
        rheon.core.errors.FlowError: source 'source_1': unknown time column 'tz' (columns: ts). Did you mean 'ts'?
        """
        if not isinstance(source, Source):
            msg = f"source: expected a source such as rh.io.Records(rows) (got {source!r})"
            raise FlowError(msg)
        op_name = self.graph.name_for("source", name)
        where = f"source '{op_name}'"
        schema = source.schema()
        column, time_expr, time_type = None, None, None
        if time is not None:
            column, time_expr, schema, time_type = declared_time(time, schema, where=where)
        delay_ms = to_ms(max_delay, what=f"{where}: max_delay")
        if time is None and delay_ms:
            msg = f'{where}: max_delay needs an event-time column; add time="..."'
            raise FlowError(msg)
        idle_ms = to_ms(idle_timeout, what=f"{where}: idle_timeout") if idle_timeout is not None else None
        node = Node(
            op_name,
            SourceSpec(source, time_expr=time_expr, max_delay_ms=delay_ms, idle_timeout_ms=idle_ms),
            schema=schema,
            time=column,
            time_type=time_type,
        )
        self.graph.add(node)
        return Stream(self, node)

    def dead_letters(self) -> Stream:
        """The stream of records that failed anywhere in the flow.

        Each row has ``operator`` (which step failed), ``reason`` and ``payload`` (the
        original record as JSON).

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("d"); bad = rh.io.Collect()
        >>> flow.source(rh.io.Records([{"x": 0}, {"x": 2}])).map(lambda r: {"y": 1 / r["x"]}, name="inv").sink(rh.io.Collect())
        >>> flow.dead_letters().sink(bad)
        >>> flow.run(); bad.rows
        [{'operator': "map 'inv'", 'reason': 'ZeroDivisionError: division by zero', 'payload': '{"x": 0}'}]
        """
        if self._dead_node is None:
            self._dead_node = self.graph.add(
                Node(self.graph.name_for("dead_letters", None), DeadLettersSpec(), schema=DEAD_LETTER_SCHEMA)
            )
        return Stream(self, self._dead_node)

    def explain(self) -> str:
        """The plan the flow would run, one operator per line with its inputs and parameters
        (Python steps in a row are fused into one ``chain``).

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("e")
        >>> s = flow.source(rh.io.Records([{"k": "a", "x": 1, "ts": 0}]), time="ts", max_delay="1s", name="in")
        >>> s = s.filter(lambda r: r["x"] > 0, name="pos").map(lambda r: r, name="same")
        >>> s.key_by("k").window(rh.tumbling("1m"), name="per_k").agg(n=rh.count(), hi=rh.max("x")).sink(print, name="out")
        >>> print(flow.explain())
        flow 'e'
          source 'in' time='ts' (per-record watermarks): Records(1 rows, batch_size=1000) max_delay=1000ms
          chain 'pos+same' <- in
          window 'per_k' <- same: tumbling(60000ms) by k: n=rh.count(), hi=rh.max('x')
          sink 'out' <- per_k: Callback
        """
        return make_plan(self.graph).describe()

    def run(
        self,
        *,
        duration: Duration | None = None,
        drain: bool = False,
        clock: Clock | None = None,
        handle_signals: bool = True,
        on_start: Callable[[Executor], None] | None = None,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: Duration | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        progress: bool = False,
        ui: int | None = None,
        ui_host: str = "127.0.0.1",
        ui_token: str | None = None,
    ) -> None:
        """Run the flow until it ends; :meth:`metrics` then tells what happened.

        It ends when every source is exhausted (bounded sources), when ``duration`` has
        passed, or on :meth:`stop`, Ctrl-C or SIGTERM. At the end of bounded sources the
        watermark moves to +infinity, so every open window fires. When stopped early, open
        windows are dropped unless ``drain=True``, which fires them as if the input had ended.

        With ``checkpoint_dir``, a checkpoint is taken every ``checkpoint_every`` (default 1 s)
        and when the run ends or is stopped; run again with the same directory, the flow resumes
        from the latest complete checkpoint. With replayable sources (``Records`` lists,
        files) and committing sinks (``FileSink``) the output is then exactly-once, even across
        a crash (see docs/guarantees.md).

        With ``metrics_port``, the flow's metrics are served for Prometheus at
        ``http://{metrics_host}:{metrics_port}/metrics`` while it runs (``0`` picks a free port;
        :attr:`metrics_url` tells which). It listens on 127.0.0.1 unless ``metrics_host`` says
        otherwise. docs/observability.md lists the metrics. With ``progress=True`` a live line
        on stderr shows records in and out, the input rate, the watermark and its lag, late rows
        and dead letters while the flow runs. With ``ui=8080`` a web dashboard is served at
        ``http://{ui_host}:8080`` while it runs (:attr:`ui_url`; ``0`` picks a free port): the
        flow's graph with live rates, throughput, latency and lag charts, checkpoints, dead
        letters and the streams named with ``stream.show(title)``; with ``ui_token`` every request
        but ``/healthz`` and ``/readyz`` needs it.

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("r"); out = rh.io.Collect()
        >>> flow.source(rh.io.Generator(lambda i: {"i": i}, rate=1000)).sink(out)
        >>> flow.run(duration="50ms")
        >>> 10 < len(out) < 200, flow.metrics().running
        (True, False)
        """
        plan = make_plan(self.graph)
        outer = _RUNNER.get()
        if outer is not None:  # `rheon run` imposes its command-line settings on every run inside it
            outer.ran.append(self)
            duration = outer.duration if outer.duration is not None else duration
            drain = drain or outer.drain
            checkpoint_dir = outer.checkpoint_dir if outer.checkpoint_dir is not None else checkpoint_dir
            if outer.metrics_port is not None:
                metrics_port, metrics_host = outer.metrics_port, outer.metrics_host
            progress = progress or outer.progress
            if outer.ui is not None:
                ui, ui_host, ui_token = outer.ui, outer.ui_host, outer.ui_token
        duration_ms = to_ms(duration, what="run: duration") if duration is not None else None
        self._stop = threading.Event()
        directory = checkpoint_dir if checkpoint_dir is not None else self.checkpoint_dir
        settings = None
        if directory is not None:
            every = checkpoint_every if checkpoint_every is not None else self.checkpoint_every
            settings = CheckpointSettings(Path(directory), to_ms(every, what="run: checkpoint_every"))
        executor = Executor(
            plan,
            clock=clock or SystemClock(),
            on_error=self.on_error,
            max_error_rate=self.max_error_rate,
            stop=self._stop,
            duration_ms=duration_ms,
            drain=drain,
            checkpoints=settings,
            state_backend=self.state_backend,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            progress=progress,
            ui_port=ui,
            ui_host=ui_host,
            ui_token=ui_token,
        )
        self._executor = executor
        restore = _install_signal_handlers(self._stop, executor.wake_event) if handle_signals else None
        try:
            executor.run(on_start)
        finally:
            if restore is not None:
                restore()

    def state(self, operator: str) -> pl.DataFrame:
        """The state of ``operator`` (its name) as a Polars DataFrame.

        While the flow runs, the run loop takes it between two batches, so it is consistent
        (safe to call from any thread); after a run, it is the state the run ended with. Keyed
        state has one row per key: ``key``, ``key_group``, then one column per state cell;
        windows show their panes or sessions. For a checkpoint on disk use :func:`rheon.inspect`.

        Examples
        --------
        >>> import rheon as rh
        >>> rows = [{"card": "a", "amount": 5}, {"card": "b", "amount": 7}, {"card": "a", "amount": 1}]
        >>> flow = rh.Flow("totals")
        >>> def add(record, ctx):
        ...     total = ctx.state("total", default=0); total.set(total.get() + record["amount"])
        >>> flow.source(rh.io.Records(rows)).key_by("card").process(add, name="sum").sink(rh.io.Collect())
        >>> flow.run()
        >>> flow.state("sum").sort("key").select("key", "total").rows()
        [('a', 6), ('b', 7)]
        """
        executor = self._executor
        if executor is None:
            msg = (
                f"flow '{self.name}' has not run: state exists while and after it runs (rh.inspect reads a checkpoint)"
            )
            raise FlowError(msg)
        return executor.state_of(operator)

    @property
    def metrics_url(self) -> str | None:
        """Where the running flow serves its Prometheus metrics (``run(metrics_port=...)``), if it does.

        Examples
        --------
        >>> import rheon as rh
        >>> rh.Flow("m").metrics_url is None
        True
        """
        executor = self._executor
        server = executor.metrics_server if executor is not None else None
        return server.url if server is not None else None

    @property
    def ui_url(self) -> str | None:
        """The running flow's dashboard address (``run(ui=...)``), if it serves one.

        Examples
        --------
        >>> import rheon as rh
        >>> rh.Flow("u").ui_url is None
        True
        """
        executor = self._executor
        dashboard = executor.dashboard if executor is not None else None
        return dashboard.url if dashboard is not None else None

    def stop(self) -> None:
        """Ask a running flow to stop after the current batch (safe from any thread or handler).

        Examples
        --------
        >>> import rheon as rh, threading
        >>> flow = rh.Flow("s")
        >>> flow.source(rh.io.Generator(lambda i: {"i": i}, rate=100)).sink(rh.io.Collect())
        >>> threading.Timer(0.05, flow.stop).start()
        >>> flow.run()
        >>> flow.metrics().running
        False
        """
        self._stop.set()
        executor = self._executor
        if executor is not None:
            executor.wake_event.set()  # end the loop's sleep now

    def metrics(self) -> RunStats | None:
        """Metrics of the current (or last) run, or ``None`` before the first run.

        Safe to call from another thread while the flow runs.

        Examples
        --------
        >>> import rheon as rh
        >>> flow = rh.Flow("m")
        >>> flow.source(rh.io.Records([{"x": 1}, {"x": 2}])).sink(rh.io.Collect())
        >>> flow.metrics() is None
        True
        >>> flow.run(); flow.metrics().records_in
        2
        """
        return self._executor.stats() if self._executor is not None else None


def _install_signal_handlers(stop: threading.Event, wake: threading.Event) -> Callable[[], None] | None:
    """SIGINT/SIGTERM stop the flow cleanly; a second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("stop_requested signal=%s", signal.Signals(signum).name)
        stop.set()
        wake.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


@dataclass
class Runner:
    """What an outer runner (``rheon run``) imposes on every ``flow.run()`` called inside
    :func:`running_under`, and which flows ran. ``None`` leaves the flow's own argument."""

    duration: Duration | None = None
    drain: bool = False
    checkpoint_dir: str | Path | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    progress: bool = False
    ui: int | None = None
    ui_host: str = "127.0.0.1"
    ui_token: str | None = None
    ran: list[Flow] = field(default_factory=list)


_RUNNER: ContextVar[Runner | None] = ContextVar("rheon_runner", default=None)


@contextmanager
def running_under(runner: Runner) -> Iterator[Runner]:
    """Make every ``flow.run()`` in this block use ``runner``'s settings (and record it).

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("under"); flow.source(rh.io.Generator(lambda i: {"i": i}, rate=1000)).sink(rh.io.Collect())
    >>> with running_under(Runner(duration="30ms")) as runner:
    ...     flow.run()                      # would run forever without the runner's duration
    >>> [f.name for f in runner.ran]
    ['under']
    """
    token = _RUNNER.set(runner)
    try:
        yield runner
    finally:
        _RUNNER.reset(token)
