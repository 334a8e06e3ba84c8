"""Large keyed state: checkpoint and restore times with 1M keys, per state backend.

    python benchmarks/state.py [--keys 1000000] [--updates 100000]

A process function keeps a value per key. Run 1 puts ``--keys`` keys in state and stops: its
final checkpoint is a full one. Run 2 resumes, updates ``--updates`` keys (10 %) and stops: its
checkpoint is incremental. Run 3 resumes and restores that state. Each run is a fresh process.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

import rheon as rh  # noqa: E402


def _count(record: dict, ctx: rh.operators.process.ProcessContext) -> None:  # type: ignore[name-defined]
    total = ctx.state("total", default=0)
    total.set(total.get() + record["amount"])


def _flow(keys: int, updates: int, backend: str, stop_after: int) -> rh.Flow:
    first = pl.DataFrame({"card": pl.int_range(0, keys, eager=True)})
    again = pl.DataFrame({"card": pl.int_range(0, keys, step=max(keys // updates, 1), eager=True)})
    frame = pl.concat([first, again]).with_columns(amount=pl.lit(1), ts=pl.int_range(0, pl.len()))
    flow = rh.Flow("state-bench", state_backend=backend)
    seen = [0]

    def stop(frame: pl.DataFrame) -> None:
        seen[0] += frame.height
        if seen[0] >= stop_after:
            flow.stop()

    src = flow.source(rh.io.Records(frame, batch_size=50_000), time="ts", name="in")
    src.key_by("card").process(_count, name="totals").sink(rh.io.Callback(stop, batch=True), name="out")
    src.sink(rh.io.Callback(stop, batch=True), name="progress")
    return flow


def worker(args: argparse.Namespace) -> None:
    stop_after = {1: args.keys, 2: args.keys + args.updates, 3: 0}[args.phase]
    flow = _flow(args.keys, args.updates, args.backend, stop_after if args.phase != 3 else 1)
    started = time.perf_counter()
    flow.run(checkpoint_dir=args.dir, checkpoint_every="1h")
    stats = flow.metrics()
    assert stats is not None
    print(
        json.dumps(
            {
                "phase": args.phase,
                "records_in": stats.records_in,
                "checkpoint_ms": stats.checkpoint_ms,
                "restore_ms": stats.restore_ms,
                "seconds": time.perf_counter() - started,
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--updates", type=int, default=100_000)
    parser.add_argument("--backends", default="memory,rocksdb")
    parser.add_argument("--phase", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        worker(args)
        return
    for backend in args.backends.split(","):
        directory = tempfile.mkdtemp(prefix="rheon-state-bench-")
        results = []
        for phase in (1, 2, 3):
            cmd = [sys.executable, __file__, "--phase", str(phase), "--backend", backend, "--dir", directory,
                   "--keys", str(args.keys), "--updates", str(args.updates)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.exit(proc.stderr)
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        full, incremental, restore = results
        print(
            f"{backend:8} {args.keys:,} keys: full checkpoint {full['checkpoint_ms'] / 1000:.3f} s, "
            f"incremental checkpoint ({args.updates:,} keys changed) {incremental['checkpoint_ms'] / 1000:.3f} s, "
            f"restore {restore['restore_ms'] / 1000:.3f} s, peak RSS {max(r['peak_mb'] for r in results):,} MB; "
            f"loading ran at {full['records_in'] / full['seconds']:,.0f} records/s"
        )
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
