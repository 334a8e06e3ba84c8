"""Benchmark input: 10M events in Parquet, generated once with a fixed seed.

Events arrive at 10k per simulated second; each is shifted back by up to 2 s, so they are out of
order by up to 2 s (``max_delay="2s"`` keeps every one on time). Keys 0..999 unless ``keys`` says
otherwise (Q2 also runs at 100,000 and 1,000,000 keys), values in [0, 1).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl

DATA_DIR = Path(__file__).parent / "data"
SEED = 20261126
EVENTS_PER_SECOND = 10_000
KEYS = 1_000


def path_for(n: int, keys: int = KEYS) -> Path:
    # The default key count keeps its old file name, so files generated before keys existed still serve.
    return DATA_DIR / (f"events_{n}.parquet" if keys == KEYS else f"events_{n}_keys{keys}.parquet")


def generate(n: int, keys: int = KEYS) -> Path:
    """Write (once) and return the Parquet file of ``n`` events over keys ``0 .. keys - 1``."""
    path = path_for(n, keys)
    if path.exists():
        return path
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    base_ms = 1_700_000_000_000 + (np.arange(n, dtype=np.int64) * 1000) // EVENTS_PER_SECOND
    ts = base_ms - rng.integers(0, 2001, n, dtype=np.int64)
    frame = pl.DataFrame(
        {
            "ts": ts,
            "key": rng.integers(0, keys, n, dtype=np.int64),
            "value": rng.random(n),
        }
    )
    tmp = path.with_suffix(".tmp")
    frame.write_parquet(tmp)
    tmp.rename(path)
    return path


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]  # events, then keys
    print(generate(*args) if args else generate(10_000_000))
