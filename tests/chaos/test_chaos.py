"""Chaos: SIGKILL a running flow again and again; its committed output must equal, row for
row, that of an uninterrupted run (nothing missing, nothing duplicated). The flow has windows of
three kinds, a keyed reduce, a process function with timers, an interval join and a CEP pattern
with a quantifier and ``within`` (its matches and its timed-out partial matches).

The default run kills a flow over 100k events 5 times: its first run from outside at a random
moment, the four others inside the checkpoint protocol, one at each of its four moments (see
flow_under_test.py). ``pytest -m slow`` runs the long version (3M events, 30 kills: every third
run, from the first, from outside, the others inside). A run that dies inside the protocol does
so at the moment next in turn, drawn at random within the run's first two checkpoints, so that
even the short run surely crashes at each moment. The uninterrupted reference run goes on
meanwhile, on the other core.

Kills are timed by the progress the flow reports (a line after each checkpoint), never by a
timer started with the process: on a loaded machine ``import rheon`` alone took 2.7-5 s, so every
kill landed before the first checkpoint. The flow checkpoints after every batch, so each run gets
a few batches further whatever the machine's speed, and the input outlasts all the kills.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest

FLOW = Path(__file__).with_name("flow_under_test.py")
OUTPUTS = {
    "tumbling": pl.read_ndjson,
    "sliding": pl.read_parquet,
    "sessions": pl.read_csv,
    "running": pl.read_ndjson,
    "bursts": pl.read_ndjson,
    "joined": pl.read_csv,
    "matches": pl.read_parquet,
    "timed_out": pl.read_ndjson,
}


def make_input(directory: Path, events: int, files: int, seed: int) -> str:
    directory.mkdir(parents=True)
    rnd = random.Random(seed)
    per_file = events // files
    i = 0
    for f in range(files):
        lines = []
        for _ in range(per_file):
            ts = 1_700_000_000_000 + i * 2 - rnd.randrange(800)  # 500 events per second, 0.8 s disorder
            kind = "buy" if rnd.random() < 0.3 else "view"
            lines.append(json.dumps({"key": rnd.randrange(50), "value": rnd.randrange(100), "ts": ts, "kind": kind}))
            i += 1
        (directory / f"events-{f:03d}.jsonl").write_text("\n".join(lines) + "\n")
    return str(directory / "*.jsonl")


def run_flow(
    input_glob: str, out: Path, ckpt: Path, env: dict[str, str] | None = None, *, output: Path | None = None
) -> subprocess.Popen[str]:
    """Start the flow; its stdout and stderr go to pipes, or to ``output``.out and .err."""
    pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    if output is not None:
        pipes = {"stdout": output.with_suffix(".out").open("w"), "stderr": output.with_suffix(".err").open("w")}
    try:
        return subprocess.Popen(
            [sys.executable, str(FLOW), input_glob, str(out), str(ckpt)],
            text=True,
            env={**os.environ, **(env or {})},
            **pipes,
        )
    finally:
        if output is not None:
            for handle in pipes.values():
                handle.close()


class Child:
    """A run of the flow whose output lines are read as they come (by threads, so that neither
    pipe can fill up and stall the child)."""

    STARTUP_TIMEOUT_S = 300  # import, restore and the first checkpoint, on a slow loaded machine

    def __init__(self, input_glob: str, out: Path, ckpt: Path, env: dict[str, str]) -> None:
        self.proc = run_flow(input_glob, out, ckpt, env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.checkpoint_times: list[float] = []  # when wait_for_checkpoints saw each one
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, False), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, pipe, into: list[str], signal_lines: bool) -> None:
        for line in pipe:
            into.append(line)
            if signal_lines:
                self.lines.put(line)
        if signal_lines:
            self.lines.put(None)

    def wait_for_checkpoints(self, count: int) -> bool:
        """Wait until this run reports ``count`` checkpoints; False if it ends first."""
        deadline = time.monotonic() + self.STARTUP_TIMEOUT_S
        seen = 0
        while seen < count:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                pytest.fail(f"the flow reported {seen} checkpoints in {self.STARTUP_TIMEOUT_S} s, expected {count}")
            if line is None:
                return False
            if line.startswith("checkpointed "):
                seen += 1
                self.checkpoint_times.append(time.monotonic())
        return True

    def batch_seconds(self, default: float) -> float:
        """The shortest time between two checkpoints seen (a batch and its checkpoint), else ``default``."""
        times = self.checkpoint_times
        return min((b - a for a, b in itertools.pairwise(times)), default=default)

    def finish(self, timeout_s: float = 600) -> tuple[int, str, str]:
        returncode = self.proc.wait(timeout=timeout_s)
        for reader in self.readers:
            reader.join(timeout=60)
        return returncode, "".join(self.stdout), "".join(self.stderr)


def committed(out: Path) -> dict[str, pl.DataFrame]:
    result = {}
    for name, read in OUTPUTS.items():
        folder = out / name
        frames = [read(p) for p in sorted(folder.glob("part-*"))]
        leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".pending")]
        assert leftovers == [], f"{name}: uncommitted files after the final run: {leftovers}"
        result[name] = pl.concat(frames) if frames else pl.DataFrame()
    return result


# The moments inside the checkpoint protocol where planned runs die, each with the range its
# occurrence is drawn from: within a run's first two checkpoints (one writes 15 files, fsyncs its
# directory once before and the parent once after the rename, and its commit renames 8 sink files).
PLANNED = {
    "mid-checkpoint-file": 30,
    "before-checkpoint-rename": 2,
    "after-checkpoint-rename": 2,
    "in-sink-commit": 16,
}


def chaos(tmp_path: Path, *, events: int, files: int, kills: int, seed: int, outside_every: int = 3) -> None:
    """Kill the flow ``kills`` times: from outside every ``outside_every``-th run, from the first;
    inside the checkpoint protocol the others. Then finish it and compare with a run not killed."""
    input_glob = make_input(tmp_path / "in", events, files, seed)
    # The uninterrupted run, on the other core while this one drives the kills.
    reference = run_flow(input_glob, tmp_path / "ref", tmp_path / "ref-ckpt", output=tmp_path / "reference")

    rnd = random.Random(seed)
    out_dir, ckpt = tmp_path / "out", tmp_path / "ckpt"
    killed = outside = planned_runs = 0
    inside: Counter[str] = Counter()  # kills at each moment of the checkpoint protocol
    attempts = 0
    batch_s = 0.15  # how long a batch and its checkpoint take, as last measured
    while killed < kills:
        attempts += 1
        assert attempts <= kills * 3, "the flow keeps finishing before it can be killed; use more events"
        planned = None
        if (attempts - 1) % outside_every:  # dies at a chosen moment inside the checkpoint protocol
            planned = list(PLANNED)[planned_runs % len(PLANNED)]
            planned_runs += 1
            at = f"{planned}:{rnd.randint(1, PLANNED[planned])}"
            env = {"CHAOS_KILL_AT": at, "CHAOS_SEED": str(rnd.randrange(10**9)), "CHAOS_EVERY": "0ms"}
        else:  # killed from outside at a random moment
            env = {"CHAOS_SEED": str(rnd.randrange(10**9)), "CHAOS_EVERY": "0ms"}
        child = Child(input_glob, out_dir, ckpt, env)
        # Kill once this run has taken 1-3 checkpoints (one per batch), at a random moment of the
        # batch or checkpoint that follows: the offset picks the moment, it waits for nothing. It
        # is drawn within the time a batch takes here, so that however fast the machine, a run
        # gets at most a batch further and the input outlasts the kills.
        if planned is None and child.wait_for_checkpoints(rnd.randint(1, 3)):
            batch_s = child.batch_seconds(default=batch_s)
            time.sleep(rnd.uniform(0.0, batch_s))
            child.proc.send_signal(signal.SIGKILL)
        returncode, stdout, stderr = child.finish(timeout_s=120)
        # Checkpoints are written atomically: a crash never leaves one that verification rejects.
        assert "checkpoint_damaged" not in stderr, stderr
        if returncode == -signal.SIGKILL:
            killed += 1
            if planned is not None:
                assert f"dying {planned}\n" in stdout, f"the run planned to die at {at} did not: {stdout[-2000:]}"
                inside[planned] += 1
            else:
                outside += 1
        else:
            assert returncode == 0, stderr
            assert "restored_from=None" not in stdout or attempts == 1, stdout
            pytest.fail(f"the flow finished after {killed} kills; it must be killed {kills} times")
    assert sorted(inside) == sorted(PLANNED), f"kills inside the checkpoint protocol: {dict(inside)}"
    assert outside >= 1, f"none of the {killed} kills came from outside"
    final = run_flow(input_glob, out_dir, ckpt)
    stdout, stderr = final.communicate(timeout=600)
    assert final.returncode == 0, stderr
    assert "checkpoint_damaged" not in stderr, stderr
    assert "restored_from=None" not in stdout
    assert reference.wait(timeout=600) == 0, (tmp_path / "reference.err").read_text()
    expected = committed(tmp_path / "ref")
    assert all(frame.height for frame in expected.values())
    got = committed(out_dir)
    for name, frame in expected.items():
        assert got[name].height == frame.height, f"{name}: {got[name].height} rows, expected {frame.height}"
        assert got[name].equals(frame), f"{name}: rows differ"
    print(f"{killed} kills ({outside} from outside, inside: {dict(inside)}); final: {stdout.strip().splitlines()[-1]}")


def test_sigkill_many_times_then_output_equals_uninterrupted_run(tmp_path):
    chaos(tmp_path, events=100_000, files=4, kills=5, seed=1, outside_every=5)


@pytest.mark.slow
def test_sigkill_long_version(tmp_path):
    chaos(tmp_path, events=3_000_000, files=10, kills=30, seed=2)
