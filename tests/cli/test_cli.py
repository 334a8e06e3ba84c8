"""The ``rheon`` command line: help, version, ``rheon run`` on flow files, ``rheon demo``."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import rheon
from rheon.cli.main import cli

ONE_FLOW = """
import rheon as rh

flow = rh.Flow("hello")
flow.source(rh.io.Records([{"x": 1}, {"x": 2}])).sink(lambda r: print("row", r["x"]))

if __name__ == "__main__":
    print("MAIN BLOCK RAN")
"""

TWO_FLOWS = """
import rheon as rh

first = rh.Flow("payments")
first.source(rh.io.Records([{"x": 1}])).sink(lambda r: print("payments row"))
second = rh.Flow("alerts")
second.source(rh.io.Records([{"x": 2}])).sink(lambda r: print("alerts row"))
"""


@pytest.fixture(autouse=True)
def _restore_rheon_logger() -> Iterator[None]:
    """``rheon run`` calls configure_logging(); undo it so later tests see the logger as it was."""
    logger = logging.getLogger("rheon")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def write(tmp_path: Path, text: str, name: str = "flow.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


# -- help and version ------------------------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert "Usage: rheon" in result.output
    assert re.search(r"^\s+demo\s", result.output, re.M)
    assert re.search(r"^\s+run\s", result.output, re.M)


@pytest.mark.parametrize("command", ["run", "demo"])
def test_each_command_has_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "--duration" in result.output


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output == f"rheon {rheon.__version__}\n"


def test_console_script_points_at_main() -> None:
    (script,) = entry_points(group="console_scripts", name="rheon")
    assert script.value == "rheon.cli.main:main"


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rheon.cli", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"rheon {rheon.__version__}\n"


# -- rheon run -------------------------------------------------------------------------------------


def test_run_the_only_flow(tmp_path: Path) -> None:
    result = invoke("run", write(tmp_path, ONE_FLOW))
    assert result.exit_code == 0, result.output
    assert result.stdout == "row 1\nrow 2\n"  # and the __main__ block did not run
    assert "flow 'hello': 2 records in, 2 out" in result.stderr


def test_run_asks_which_of_several_flows(tmp_path: Path) -> None:
    result = invoke("run", write(tmp_path, TWO_FLOWS))
    assert result.exit_code == 2
    assert "flow.py defines 2 flows: first (Flow 'payments'), second (Flow 'alerts')" in result.stderr
    assert "--flow NAME" in result.stderr
    assert "row" not in result.stdout


@pytest.mark.parametrize("name", ["second", "alerts"])  # variable name or Flow name
def test_run_picks_a_flow_by_name(tmp_path: Path, name: str) -> None:
    result = invoke("run", write(tmp_path, TWO_FLOWS), "--flow", name)
    assert result.exit_code == 0, result.output
    assert result.stdout == "alerts row\n"
    assert "flow 'alerts'" in result.stderr


def test_run_unknown_flow_name(tmp_path: Path) -> None:
    result = invoke("run", write(tmp_path, TWO_FLOWS), "--flow", "nope")
    assert result.exit_code == 2
    assert "--flow 'nope': flow.py has no such flow (flows: first (Flow 'payments'), second" in result.stderr


def test_run_file_without_a_flow(tmp_path: Path) -> None:
    result = invoke("run", write(tmp_path, "x = 1\n"))
    assert result.exit_code == 1
    assert "no rheon.Flow found in flow.py" in result.stderr


def test_run_missing_file(tmp_path: Path) -> None:
    result = invoke("run", tmp_path / "missing.py")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_run_bad_duration(tmp_path: Path) -> None:
    result = invoke("run", write(tmp_path, ONE_FLOW), "--duration", "10 sec")
    assert result.exit_code == 2
    assert "cannot read duration '10 sec'" in result.stderr


def test_flow_error_is_reported_without_traceback(tmp_path: Path) -> None:
    text = """
        import rheon as rh
        flow = rh.Flow("bad")
        flow.source(rh.io.Records([{"ts": 0}]), time="tz")
    """
    result = invoke("run", write(tmp_path, text))
    assert result.exit_code == 1
    assert "Error: FlowError: source 'source_1': unknown time column 'tz'" in result.stderr
    assert "Traceback" not in result.output


def test_record_error_at_run_time_exits_1(tmp_path: Path) -> None:
    text = """
        import rheon as rh
        flow = rh.Flow("fails", on_error="fail")
        flow.source(rh.io.Records([{"x": 0}])).map(lambda r: {"y": 1 / r["x"]}, name="inv").sink(print)
    """
    result = invoke("run", write(tmp_path, text))
    assert result.exit_code == 1
    assert "RecordError: map 'inv': ZeroDivisionError: division by zero" in result.stderr
    assert "Traceback" not in result.output


def test_run_with_duration_and_drain(tmp_path: Path) -> None:
    text = """
        import rheon as rh
        flow = rh.Flow("gen")
        events = flow.source(rh.io.Generator(lambda i: {"i": i}, rate=200, timestamp="ts"), time="ts")
        events.window(rh.tumbling("1h")).agg(n=rh.count()).sink(lambda r: print("window", r["n"] > 0))
    """
    path = write(tmp_path, text)
    plain = invoke("run", path, "--duration", "100ms")
    assert plain.exit_code == 0, plain.output
    assert plain.stdout == ""  # stopped early: the open window is dropped
    drained = invoke("run", path, "--duration", "100ms", "--drain")
    assert drained.exit_code == 0, drained.output
    assert drained.stdout == "window True\n"  # --drain fires it
    assert "flow 'gen'" in drained.stderr


def test_run_imports_modules_next_to_the_flow_file(tmp_path: Path) -> None:
    write(tmp_path, "ROWS = [{'x': 42}]\n", name="mydata.py")
    text = """
        import rheon as rh
        from mydata import ROWS
        flow = rh.Flow("neighbour")
        flow.source(rh.io.Records(ROWS)).sink(lambda r: print(r["x"]))
    """
    result = invoke("run", write(tmp_path, text))
    assert result.exit_code == 0, result.output
    assert result.stdout == "42\n"
    assert str(tmp_path) not in sys.path


def test_run_does_not_rerun_a_flow_the_file_already_ran(tmp_path: Path) -> None:
    text = """
        import rheon as rh
        flow = rh.Flow("eager")
        flow.source(rh.io.Records([{"x": 1}])).sink(lambda r: print("ran"))
        flow.run()
    """
    result = invoke("run", write(tmp_path, text))
    assert result.exit_code == 0, result.output
    assert result.stdout == "ran\n"
    assert "already ran while the file was loaded" in result.stderr


# -- rheon demo ------------------------------------------------------------------------------------


def test_demo_prints_alert_lines_when_not_a_terminal() -> None:
    # a real process with stdout on a pipe: 3 s of wall clock = 90 s of event time
    done = subprocess.run(
        [sys.executable, "-m", "rheon.cli", "demo", "--duration", "3s", "--speed", "30", "--hosts", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TERM": "dumb"},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("rheon demo: 5 hosts")
    alerts = [line for line in lines if " ALERT " in line]
    assert alerts, done.stdout
    assert re.match(
        r"\+\d\d:\d\d  ALERT     \S+ +cpu 10s avg \d+\.\d % > 85 % for 30s \(since \+\d\d:\d\d\)", alerts[0]
    )
    assert any(line.startswith("demo: ") for line in lines)
    assert any(line.startswith("flow 'monitoring': ") for line in lines)
    assert "\x1b[" not in done.stdout  # no terminal control codes


def test_demo_rejects_bad_options() -> None:
    assert invoke("demo", "--speed", "0").exit_code == 2
    assert invoke("demo", "--hosts", "0").exit_code == 2
    assert invoke("demo", "--duration", "soon").exit_code == 2


def test_run_an_example_file_with_a_module_level_flow() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "live_sensors.py"
    proc = subprocess.run(
        [sys.executable, "-m", "rheon.cli", "run", str(example), "--duration", "5500ms"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert 'avg {"sensor": "s0"' in proc.stdout
    assert "flow 'sensors':" in proc.stderr


BUILT_IN_MAIN = """
import rheon as rh

def main():
    flow = rh.Flow("inside")
    flow.source(rh.io.Records([{"x": 1}, {"x": 2}])).sink(lambda r: print("inside", r["x"]))
    flow.run()
    print("main done")
"""

BUILDER = """
import rheon as rh

def build():
    flow = rh.Flow("built")
    flow.source(rh.io.Generator(lambda i: {"i": i}, rate=200), name="forever").sink(lambda r: None)
    return flow

def main():
    raise SystemExit("main must not run when --function names another")
"""


def test_run_calls_main_when_the_flow_is_built_inside_it(tmp_path: Path) -> None:
    result = invoke("run", write(tmp_path, BUILT_IN_MAIN))
    assert result.exit_code == 0, result.output
    assert result.stdout == "inside 1\ninside 2\nmain done\n"
    assert "flow 'inside': 2 records in, 2 out" in result.stderr


def test_run_function_returning_a_flow_runs_it_with_the_command_line_duration(tmp_path: Path) -> None:
    result = invoke("run", write(tmp_path, BUILDER), "--function", "build", "--duration", "300ms")
    assert result.exit_code == 0, result.output
    assert "flow 'built':" in result.stderr


def test_run_unknown_function(tmp_path: Path) -> None:
    result = invoke("run", write(tmp_path, BUILDER), "--function", "nope")
    assert result.exit_code == 2
    assert "--function 'nope': flow.py has no such function (functions: build, main)" in result.stderr


def test_run_a_function_that_runs_no_flow(tmp_path: Path) -> None:
    result = invoke("run", write(tmp_path, "def main():\n    pass\n"))
    assert result.exit_code == 1
    assert "flow.py: main() ran no flow" in result.stderr


def test_run_checkpoint_dir_resumes_where_the_last_run_ended(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    first = invoke("run", write(tmp_path, BUILT_IN_MAIN), "--checkpoint-dir", str(ckpt))
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in ckpt.glob("chk-*"))
    again = invoke("run", write(tmp_path, BUILT_IN_MAIN), "--checkpoint-dir", str(ckpt))
    assert again.exit_code == 0, again.output
    assert again.stdout == "main done\n"  # both records were read and committed by the first run
    assert "flow 'inside': 0 records in" in again.stderr


TYPO = """
import rheon as rh

flow = rh.Flow("typo")
rows = [{"amount": i} for i in range(500)]
flow.source(rh.io.Records(rows)).map(lambda r: {"usd": r["amonut"] * 1.1}).sink(rh.io.Collect())
"""


def test_run_stops_a_flow_whose_function_fails_on_every_record_and_shows_the_traceback(tmp_path: Path) -> None:
    result = invoke("run", write(tmp_path, TYPO))
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert 'flow.py", line 6' in result.stderr
    assert "KeyError: 'amonut'" in result.stderr
    assert "RecordError: map 'map_1': 500 of its last 500 records failed" in result.stderr


def test_run_progress_shows_the_live_line(tmp_path: Path) -> None:
    result = invoke("run", write(tmp_path, ONE_FLOW), "--progress")
    assert result.exit_code == 0, result.output
    assert "hello " in result.stderr
    assert "in 2 · out 2" in result.stderr
