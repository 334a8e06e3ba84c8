"""The checkpoint store: complete checkpoints appear atomically; partial ones are ignored."""

from __future__ import annotations

import os

import polars as pl

from rheon.state.checkpoints import CheckpointStore, OperatorSnapshot


def _snap(n: int) -> dict[str, OperatorSnapshot]:
    return {"w": OperatorSnapshot("window", {"k": [1]}, {"panes": pl.DataFrame({"n": [n]})}, {"wm": n})}


def test_latest_complete_checkpoint_wins_and_old_ones_are_pruned(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for n in (1, 2, 3):
        store.write(n, {"flow": "f"}, _snap(n))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chk-00000002", "chk-00000003"]
    latest = store.latest()
    assert latest is not None
    assert latest.id == 3
    assert latest.operators["w"].objects == {"wm": 3}
    assert latest.operators["w"].frames["panes"].to_dicts() == [{"n": 3}]


def test_a_checkpoint_cut_short_is_ignored_and_cleaned_up(tmp_path):
    store = CheckpointStore(tmp_path)
    store.write(1, {"flow": "f"}, _snap(1))
    # A crash while writing checkpoint 2: its temporary directory is left, without a manifest.
    broken = tmp_path / ".tmp-chk-00000002-99999"
    broken.mkdir()
    (broken / "op-0000.pkl").write_bytes(b"half")
    # And a directory renamed without a manifest (cannot happen, but must not be trusted).
    (tmp_path / "chk-00000003").mkdir()
    assert store.latest_id() == 1
    reopened = CheckpointStore(tmp_path)
    reopened.write(2, {"flow": "f"}, _snap(2))
    assert not broken.exists()
    assert reopened.latest_id() == 2


def test_files_are_on_disk_before_the_rename(tmp_path, monkeypatch):
    """Every file is fsynced before the directory becomes visible."""
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    CheckpointStore(tmp_path).write(1, {"flow": "f"}, _snap(1))
    assert len(synced) >= 4  # frame file, pickle, manifest, directory (+ parent)
