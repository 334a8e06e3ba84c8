"""``rheon``: run a flow file, or watch the live monitoring demo.

::

    rheon run path/flow.py [--flow NAME | --function NAME] [--duration 10s] [--drain]
              [--checkpoint-dir DIR] [--metrics-port 9108]
    rheon inspect CHECKPOINT_DIR [--operator NAME] [--checkpoint ID] [--rows 20]
    rheon demo [--hosts 20] [--speed 5] [--duration 0s] [--seed N] [--threshold 85] [--plain] [--ui 8080]

Exit codes: 0 on success, 1 when the flow fails (a :class:`~rheon.RheonError`, printed without a
traceback) or the file defines no flow, 2 for a command-line mistake (missing file, unknown or
ambiguous ``--flow``, bad duration).
"""

from __future__ import annotations

import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path

import click
import polars as pl

import rheon
from rheon.api.flow import Flow, Runner, running_under
from rheon.cli.loader import load_target, script_dir_on_path
from rheon.core.durations import to_ms
from rheon.core.errors import FlowError, RheonError
from rheon.core.logs import configure_logging
from rheon.state.inspect import inspect as inspect_checkpoint

__all__ = ["cli", "main"]


def parse_duration(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> int | None:
    """Option callback: a duration (``"250ms"``, ``"10s"``, ``"1m30s"``) in milliseconds.

    Examples
    --------
    >>> parse_duration(None, None, "1m30s")
    90000
    >>> parse_duration(None, None, "10 sec")
    Traceback (most recent call last):
    ...
    click.exceptions.BadParameter: cannot read duration '10 sec'. Try "250ms", "2s", "1m", "1h" or "1d".
    """
    if value is None:
        return None
    try:
        return to_ms(value, what="duration")
    except FlowError as exc:
        msg = str(exc).removeprefix("duration: ")
        raise click.BadParameter(msg, ctx=ctx, param=param) from None


@click.group(name="rheon", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(rheon.__version__, "-V", "--version", prog_name="rheon", message="%(prog)s %(version)s")
def cli() -> None:
    """rheon: embedded stream processing on Polars batches.

    Run a flow file with `rheon run flow.py`, or watch a live monitoring demo with `rheon demo`.
    """


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--flow", "flow_name", metavar="NAME", help="Which flow to run when the file defines several.")
@click.option(
    "--function",
    metavar="NAME",
    help="Call this function of the file (default: main(), when the file defines no flow at module level).",
)
@click.option(
    "--duration",
    metavar="DURATION",
    callback=parse_duration,
    help="Stop after this long (e.g. 10s); default: until the input ends.",
)
@click.option("--drain", is_flag=True, help="When stopped early, fire open windows as if the input had ended.")
@click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Checkpoint into DIR (every second and at the end) and resume from it when run again.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Serve Prometheus metrics at http://127.0.0.1:PORT/metrics while the flow runs.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    metavar="HOST",
    help="Address the metrics endpoint listens on (0.0.0.0 for every interface).",
)
@click.option(
    "--ui",
    "ui_port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Serve the web dashboard at http://127.0.0.1:PORT while the flow runs.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a live line (records, rate, watermark, lag, late, dead letters); default: when stderr is a terminal.",
)
def run(
    path: Path,
    flow_name: str | None,
    function: str | None,
    duration: int | None,
    drain: bool,
    checkpoint_dir: Path | None,
    metrics_port: int | None,
    metrics_host: str,
    progress: bool | None,
    ui_port: int | None,
) -> None:
    """Run the flow defined in PATH, a Python file.

    The file runs with __name__ set to "__rheon_run__" (its `if __name__ == "__main__":` block
    is skipped). Then the rheon.Flow it defines at module level runs; a file that builds its flow
    inside a function has that function called instead (main(), or --function NAME; a function
    that returns a flow has it run). The options apply to every flow.run() the file makes. Each
    flow runs until its sources end, the duration passes, or Ctrl-C; a summary of its metrics goes
    to stderr.
    """
    configure_logging()
    runner = Runner(
        duration=f"{duration}ms" if duration is not None else None,
        drain=drain,
        checkpoint_dir=checkpoint_dir,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        progress=sys.stderr.isatty() if progress is None else progress,
        ui=ui_port,
    )
    try:
        with script_dir_on_path(path):
            target = load_target(path, flow_name, function)
            if isinstance(target, Flow) and target.metrics() is not None:
                click.echo(f"{path.name}: flow '{target.name}' already ran while the file was loaded", err=True)
                return
            with running_under(runner):
                if isinstance(target, Flow):
                    target.run()
                else:
                    result = target()
                    if isinstance(result, Flow) and result not in runner.ran:
                        result.run()
    except RheonError as exc:
        if isinstance(exc.__cause__, Exception):  # a user function's failure: show where it failed
            click.echo("".join(traceback.format_exception(exc.__cause__)).rstrip(), err=True)
        msg = f"{type(exc).__name__}: {exc}"
        raise click.ClickException(msg) from None
    if not runner.ran:
        what = function or "main"
        msg = f"{path.name}: {what}() ran no flow (it should call flow.run() or return the flow)"
        raise click.ClickException(msg)
    for flow in runner.ran:
        click.echo(str(flow.metrics()), err=True)


@cli.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--operator", "operator_name", metavar="NAME", help="Show this operator's (or source's) state.")
@click.option(
    "--checkpoint", "checkpoint_id", type=int, metavar="ID", help="Which checkpoint (default: the newest intact one)."
)
@click.option("--rows", type=click.IntRange(1), default=20, show_default=True, help="Rows of state to show.")
def inspect(directory: Path, operator_name: str | None, checkpoint_id: int | None, rows: int) -> None:
    """Show what a checkpoint in DIRECTORY holds, without running its flow.

    Lists each operator with its kind, keys, key groups, pending timers and bytes; with
    --operator NAME, that operator's state as a table (one row per key for keyed state).
    """
    try:
        view = inspect_checkpoint(directory, checkpoint_id)
        created = (
            datetime.fromtimestamp(view.created_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            if view.created_ms is not None
            else "?"
        )
        state = "the run had finished" if view.finished else "taken while running"
        click.echo(f"checkpoint {view.id} of flow '{view.flow}', {created} ({state}): {view.path}")
        with pl.Config(
            tbl_rows=max(rows, len(view.operators)), tbl_cols=-1, tbl_width_chars=200, tbl_hide_dataframe_shape=True
        ):
            if operator_name is None:
                click.echo(str(view.summary()))
            else:
                table = view.state(operator_name)
                click.echo(f"{view.operator(operator_name).kind} '{operator_name}': {table.height} rows")
                click.echo(str(table.head(rows)))
    except RheonError as exc:
        msg = f"{type(exc).__name__}: {exc}"
        raise click.ClickException(msg) from None


@cli.command(short_help="Live monitoring demo: host metrics, sliding-window averages, alerts.")
@click.option("--hosts", type=click.IntRange(1, 500), default=20, show_default=True, help="Number of hosts.")
@click.option(
    "--speed",
    type=click.FloatRange(0, min_open=True),
    default=5.0,
    show_default=True,
    help="Event-time seconds per wall-clock second.",
)
@click.option(
    "--duration",
    metavar="DURATION",
    callback=parse_duration,
    default="0s",
    show_default=True,
    help="How long to run (wall clock); 0s (the default) runs until Ctrl-C.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the synthetic metrics and incidents.")
@click.option(
    "--threshold",
    type=click.FloatRange(0, 100),
    default=85.0,
    show_default=True,
    help="Alert when a host's 10 s average cpu (%) stays above this for 30 s.",
)
@click.option("--plain", is_flag=True, help="Print alerts as lines instead of the live table.")
@click.option(
    "--ui",
    "ui_port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Serve the web dashboard at http://127.0.0.1:PORT too (its address is printed first).",
)
def demo(
    hosts: int, speed: float, duration: int, seed: int, threshold: float, plain: bool, ui_port: int | None
) -> None:
    """Live monitoring demo: synthetic metrics from many hosts, 10 s sliding averages, alerts.

    Every host sends cpu, memory and error-rate readings; rheon keys them by host, averages them
    over 10 s sliding windows every second, and raises an alert when a host's cpu (or error
    rate) stays above its limit for 30 s, then a resolution when it drops back. Event time runs
    SPEED times faster than the wall clock. In a terminal the hosts, alerts and the flow's
    metrics update live; otherwise alerts are printed as lines.
    """
    from rheon.cli.demo_ui import run_demo  # rich's live display is only needed here

    try:
        run_demo(
            hosts=hosts,
            speed=speed,
            duration_ms=duration or None,
            seed=seed,
            threshold=threshold,
            live=False if plain else None,
            ui=ui_port,
        )
    except RheonError as exc:
        msg = f"{type(exc).__name__}: {exc}"
        raise click.ClickException(msg) from None


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``rheon`` console script.

    Examples
    --------
    >>> from click.testing import CliRunner
    >>> result = CliRunner().invoke(cli, ["--version"])
    >>> result.exit_code, result.output.startswith("rheon ")
    (0, True)
    """
    cli.main(args=argv, prog_name="rheon")
