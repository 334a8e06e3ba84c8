"""The flow the chaos test kills: files in; windows, a keyed reduce, a process function with
event-time timers, an interval join and a CEP pattern (matches and timed-out partial matches);
files out.

Run: python flow_under_test.py INPUT_GLOB OUT_DIR CHECKPOINT_DIR

It prints ``checkpointed N`` after each checkpoint, so that the test can time its kills by the
flow's progress: on a loaded machine start-up (``import rheon``) alone takes seconds, so a timer
started with the process says nothing about how far the flow has got.

With CHAOS_KILL_P=p (and CHAOS_SEED), the process SIGKILLs itself with probability p at points
inside the checkpoint protocol: halfway through writing one of the checkpoint's files
(``mid-checkpoint-file``), after they are written but before the atomic rename
(``before-checkpoint-rename``), right after the rename (``after-checkpoint-rename``), and between
the renames of a sink's commit (``in-sink-commit``). With CHAOS_KILL_AT=WHERE:N it SIGKILLs itself
the N-th time it reaches point WHERE, so that a test can place a crash at a chosen moment rather
than hope that chance puts one there. Before dying it prints ``dying WHERE``. That makes sure
crashes hit the moments that are hardest to get right, not only the quiet ones.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from collections import Counter
from pathlib import Path

import rheon as rh
import rheon.io.filesink as filesink_module
import rheon.state.checkpoints as checkpoints_module
from rheon import cep
from rheon.operators.process import ProcessContext
from rheon.runtime.checkpointing import CheckpointCoordinator


def _install_crash_points() -> None:
    p = float(os.environ.get("CHAOS_KILL_P", "0"))
    at = os.environ.get("CHAOS_KILL_AT", "")
    if p <= 0 and not at:
        return
    rnd = random.Random(int(os.environ.get("CHAOS_SEED", "0")))
    planned_where, _, planned_nth = at.rpartition(":")
    reached: Counter[str] = Counter()

    def die(where: str) -> None:
        sys.stdout.write(f"dying {where}\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def due(where: str) -> bool:
        reached[where] += 1
        by_chance = p > 0 and rnd.random() < p
        return by_chance or (where == planned_where and reached[where] == int(planned_nth))

    def maybe_die(where: str) -> None:
        if due(where):
            die(where)

    real_fsync_dir = checkpoints_module._fsync_dir
    real_write_file = checkpoints_module._write_file
    real_rename = filesink_module._FileSinkLogic._rename

    def fsync_dir(path: Path) -> None:
        # Called for the checkpoint's temporary directory before its rename, then for the parent.
        temporary = path.name.startswith(checkpoints_module._TMP)
        maybe_die("before-checkpoint-rename" if temporary else "after-checkpoint-rename")
        real_fsync_dir(path)

    def write_file(path: Path, data: bytes) -> None:
        if due("mid-checkpoint-file"):
            with open(path, "wb") as fh:  # half a file on disk, then the crash
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            die("mid-checkpoint-file")
        real_write_file(path, data)

    def rename(self: filesink_module._FileSinkLogic, source: Path, target: Path) -> None:
        if target.name.startswith("part-"):
            maybe_die("in-sink-commit")
        real_rename(self, source, target)

    checkpoints_module._fsync_dir = fsync_dir  # type: ignore[assignment]
    checkpoints_module._write_file = write_file  # type: ignore[assignment]
    filesink_module._FileSinkLogic._rename = rename  # type: ignore[method-assign]


def _report_progress() -> None:
    """Print ``checkpointed N`` once checkpoint N is complete (written and committed)."""
    real_checkpoint = CheckpointCoordinator.checkpoint

    def checkpoint(self: CheckpointCoordinator, *, final: bool = False) -> int:
        checkpoint_id = real_checkpoint(self, final=final)
        sys.stdout.write(f"checkpointed {checkpoint_id}\n")
        sys.stdout.flush()
        return checkpoint_id

    CheckpointCoordinator.checkpoint = checkpoint  # type: ignore[method-assign]


class Bursts:
    """Per key: count events; 2 s (event time) after a key's first event, report how many came."""

    def process(self, record: dict, ctx: ProcessContext) -> None:
        n = ctx.state("n", default=0)
        if n.get() == 0:
            ctx.timers.register_event_time(record["ts"] + 2_000)
        n.set(n.get() + 1)
        ctx.state.list("values").append(record["value"])

    def on_timer(self, timestamp: int, ctx: ProcessContext) -> None:
        values = ctx.state.list("values").get()
        ctx.emit({"key": ctx.key, "at": timestamp, "n": ctx.state("n").get(), "top": max(values)})
        ctx.state("n").clear()
        ctx.state.list("values").clear()


# Brute force, with a value < 50 as a failed login and one >= 80 as a successful one: three or
# more failures in a row, then a success, within 1 s (per key, in event-time order).
BRUTE_FORCE = (
    cep.begin("fail", rh.col("value") < 50).times_or_more(3).next("success", rh.col("value") >= 80).within("1s")
)


def build(input_glob: str, out: Path) -> rh.Flow:
    flow = rh.Flow("chaos")
    events = flow.source(rh.io.JsonLines(input_glob, batch_size=5_000), time="ts", max_delay="1s", name="events")
    keyed = events.key_by("key")
    keyed.window(rh.tumbling("1s"), name="tumbling").agg(n=rh.count(), total=rh.sum("value")).sink(
        rh.io.FileSink(out / "tumbling"), name="tumbling_out"
    )
    keyed.window(rh.sliding("10s", every="2s"), name="sliding").agg(avg=rh.mean("value"), hi=rh.max("value")).sink(
        rh.io.FileSink(out / "sliding", format="parquet"), name="sliding_out"
    )
    keyed.window(rh.session(gap="300ms"), name="sessions").agg(n=rh.count()).sink(
        rh.io.FileSink(out / "sessions", format="csv"), name="sessions_out"
    )
    keyed.reduce(lambda acc, r: {**r, "value": acc["value"] + r["value"]}, name="running").filter(
        rh.col("ts") % 7 == 0
    ).sink(rh.io.FileSink(out / "running"), name="running_out")
    keyed.process(Bursts(), name="bursts").sink(rh.io.FileSink(out / "bursts"), name="bursts_out")
    views = events.filter(rh.col("kind") == "view", name="views").key_by("key")
    buys = events.filter(rh.col("kind") == "buy", name="buys").key_by("key")
    views.join(buys, between=("-100ms", "+100ms"), name="view_buy").filter(rh.col("key") < 10, name="some_keys").sink(
        rh.io.FileSink(out / "joined", format="csv"), name="joined_out"
    )
    # CEP state at every checkpoint: keys 0-29 log in often (10 times a second), so some of their
    # attempts are open and the buffer holds the last second of events (the disorder), which the
    # watermark has not released yet. Keys 30-49 log in rarely (a failure every 10 s): their
    # attempts time out, and at about every other checkpoint one is open whose key has no event in
    # the next batch, so that only its restored ``within`` timer ends it. Times rounded up to 10 ms
    # give a key several events at the same time, which keep their arrival order across a restore
    # (none becomes late: the watermark follows the original times).
    logins = (
        events.filter((rh.col("key") < 30) | (rh.col("value") == 0), name="logins")
        .with_columns(ts=(rh.col("ts") + 9) // 10 * 10)
        .key_by("key")
    )
    matches = logins.match(BRUTE_FORCE, after_match="skip_past_last_event", name="brute_force")
    matches.sink(rh.io.FileSink(out / "matches", format="parquet"), name="matches_out")
    matches.timed_out().sink(rh.io.FileSink(out / "timed_out"), name="timed_out_out")
    return flow


def main() -> None:
    input_glob, out, ckpt = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    _install_crash_points()
    _report_progress()
    flow = build(input_glob, out)
    flow.run(checkpoint_dir=ckpt, checkpoint_every=os.environ.get("CHAOS_EVERY", "100ms"))
    stats = flow.metrics()
    assert stats is not None
    print(f"done records_in={stats.records_in} restored_from={stats.restored_from} checkpoints={stats.checkpoints}")


if __name__ == "__main__":
    main()
