"""The checkpoint store: complete checkpoints appear atomically, partial ones are ignored, and every
file is checksummed and verified before a checkpoint is trusted."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
import resource
import stat
from pathlib import Path

import polars as pl
import pytest

import rheon as rh
from rheon.core.errors import CheckpointError
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


def test_a_checkpoint_cut_short_is_ignored_and_cleaned_up(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    store.write(1, {"flow": "f"}, _snap(1))
    # A crash while writing checkpoint 2: its temporary directory is left, without a manifest.
    broken = tmp_path / ".tmp-chk-00000002-99999"
    broken.mkdir()
    (broken / "op-0000.pkl").write_bytes(b"half")
    assert store.latest_id() == 1
    reopened = CheckpointStore(tmp_path)
    reopened.write(2, {"flow": "f"}, _snap(2))
    assert not broken.exists()
    assert reopened.latest_id() == 2
    # A directory renamed without a manifest cannot come from a crash (the manifest is written
    # before the rename): something removed it, so it is reported, not silently skipped.
    (tmp_path / "chk-00000003").mkdir()
    with caplog.at_level(logging.WARNING, logger="rheon"):
        latest = reopened.latest()
    assert latest is not None
    assert latest.id == 2
    assert "chk-00000003 problem='manifest.json is missing'" in caplog.text


def test_files_are_on_disk_before_the_rename(tmp_path, monkeypatch):
    """Every file is fsynced before the directory becomes visible."""
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    CheckpointStore(tmp_path).write(1, {"flow": "f"}, _snap(1))
    assert len(synced) >= 4  # frame file, pickle, manifest, directory (+ parent)


# -- checksums and verification -------------------------------------------------------------------


def _write_three(directory: Path, *, keep: int = 3) -> CheckpointStore:
    """Three checkpoints, each with a frame (.arrow), objects (.pkl) and a shared file of its own."""
    store = CheckpointStore(directory, keep=keep)
    for n in (1, 2, 3):
        files = store.shared_for("w")
        files.write("base", pickle.dumps({"state": list(range(100 * n))}))
        frame = pl.DataFrame({"k": list(range(50)), "total": [n * 10 + i for i in range(50)]})
        snap = OperatorSnapshot("window", {"k": [1]}, {"panes": frame}, {"wm": n}, files.referenced)
        store.write(n, {"flow": "f"}, {"w": snap})
    return store


def _manifest(directory: Path) -> dict:
    raw = (directory / "manifest.json").read_bytes()
    return json.loads(raw)


def test_the_manifest_records_size_and_sha256_of_every_file_and_of_itself(tmp_path):
    store = _write_three(tmp_path)
    chk = tmp_path / "chk-00000003"
    manifest = _manifest(chk)
    own = {p.name for p in chk.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == own == {"op-0000-panes.arrow", "op-0000.pkl"}
    for name, entry in manifest["files"].items():
        data = (chk / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert set(manifest["shared_files"]) == set(manifest["operators"]["w"]["shared"])
    for name, entry in manifest["shared_files"].items():
        data = (store.shared_dir / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    # The manifest's first field is the SHA-256 of its own bytes, taken with that field's value left out.
    raw = (chk / "manifest.json").read_bytes()
    digest = manifest["manifest_sha256"]
    assert hashlib.sha256(raw.replace(digest.encode(), b"", 1)).hexdigest() == digest
    assert all(store.verify(n) == [] for n in (1, 2, 3))


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGES = {
    "truncate": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "is truncated"),
    "delete": (lambda p: p.unlink(), "is missing"),
    "flip one byte": (_flip_one_byte, "does not match its"),
}


def _target(store: CheckpointStore, which: str, checkpoint_id: int = 3) -> tuple[Path, str]:
    """The file of checkpoint ``checkpoint_id`` to damage, and how a problem report names it."""
    chk = store.directory / f"chk-{checkpoint_id:08d}"
    if which == "shared":
        name = _manifest(chk)["operators"]["w"]["shared"][0]
        return store.shared_dir / name, f"shared/{name}"
    name = {"arrow": "op-0000-panes.arrow", "pkl": "op-0000.pkl", "manifest": "manifest.json"}[which]
    return chk / name, name


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("which", ["arrow", "pkl", "manifest", "shared"])
def test_a_damaged_newest_checkpoint_is_reported_and_the_one_before_it_is_used(tmp_path, caplog, which, damage):
    store = _write_three(tmp_path)
    path, label = _target(store, which)
    spoil, problem = DAMAGES[damage]
    spoil(path)
    if which == "manifest" and damage == "truncate":
        problem = "does not match its own checksum"  # the manifest's own checksum is checked first
    assert any(label in p and problem in p for p in store.verify(3)), store.verify(3)

    with caplog.at_level(logging.WARNING, logger="rheon"):
        restored = store.latest()
    assert restored is not None
    assert restored.id == 2
    assert restored.operators["w"].objects == {"wm": 2}
    assert restored.operators["w"].frames["panes"]["total"].to_list() == [20 + i for i in range(50)]
    damaged_line = next(r.getMessage() for r in caplog.records if "checkpoint_damaged" in r.getMessage())
    assert "chk-00000003" in damaged_line
    assert label in damaged_line
    assert problem in damaged_line
    # Set aside for inspection, so that the flow can write a new checkpoint 3.
    assert not (tmp_path / "chk-00000003").exists()
    assert [p.name.startswith("damaged-chk-00000003-") for p in tmp_path.iterdir()].count(True) == 1
    assert any("checkpoint_fallback" in r.getMessage() and "chk-00000002" in r.getMessage() for r in caplog.records)
    store.write(3, {"flow": "f"}, {"w": OperatorSnapshot("window", {}, {}, {"wm": 33})})
    again = store.latest()
    assert again is not None
    assert again.operators["w"].objects == {"wm": 33}


def test_when_no_checkpoint_is_intact_the_store_refuses_naming_each_problem_and_the_remedy(tmp_path):
    store = _write_three(tmp_path / "ckpt")
    _flip_one_byte(_target(store, "arrow", 3)[0])
    _target(store, "pkl", 2)[0].unlink()
    (tmp_path / "ckpt" / "chk-00000001" / "manifest.json").write_text("{")
    with pytest.raises(CheckpointError) as info:
        store.latest()
    message = str(info.value)
    assert f"checkpoint_dir {tmp_path / 'ckpt'}: no intact checkpoint to resume from" in message
    assert "chk-00000003: op-0000-panes.arrow does not match its checksum" in message
    assert "chk-00000002: op-0000.pkl is missing" in message
    assert "chk-00000001: manifest.json cannot be parsed (JSONDecodeError" in message
    assert "Start with a new checkpoint_dir, or delete the damaged chk-* directories" in message
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("chk-")) == [
        "chk-00000001",
        "chk-00000002",
        "chk-00000003",
    ]  # nothing is moved or deleted: what to do is the operator's call
    assert isinstance(info.value, rh.RheonError)


def test_a_checkpoint_whose_manifest_parses_but_fails_its_checksum_is_not_believed(tmp_path):
    """A changed digit in a source position would parse fine: the manifest's own checksum catches it."""
    store = _write_three(tmp_path)
    manifest = tmp_path / "chk-00000003" / "manifest.json"
    manifest.write_bytes(
        manifest.read_bytes().replace(b'"finished"', b'"Finished"', 1).replace(b'"flow": "f"', b'"flow": "g"')
    )
    json.loads(manifest.read_bytes())  # still valid JSON
    assert store.verify(3) == ["manifest.json does not match its own checksum"]
    latest = store.latest()
    assert latest is not None
    assert latest.id == 2


def test_at_least_two_complete_checkpoints_are_kept_to_fall_back_on(tmp_path):
    store = _write_three(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("chk-")) == ["chk-00000002", "chk-00000003"]
    manifest = _manifest(tmp_path / "chk-00000002")
    assert all((store.shared_dir / name).is_file() for name in manifest["shared_files"])
    _flip_one_byte(_target(store, "shared", 3)[0])
    latest = store.latest()
    assert latest is not None
    assert latest.id == 2


def test_a_checkpoint_written_before_checksums_is_read_with_a_warning(tmp_path, caplog):
    chk = tmp_path / "chk-00000001"
    chk.mkdir()
    pl.DataFrame({"n": [1]}).write_ipc(chk / "op-0000-panes.arrow")
    (chk / "op-0000.pkl").write_bytes(pickle.dumps({"wm": 1}))
    operators = {
        "w": {
            "kind": "window",
            "signature": {},
            "frames": {"panes": "op-0000-panes.arrow"},
            "objects": "op-0000.pkl",
            "shared": [],
        }
    }
    (chk / "manifest.json").write_text(json.dumps({"format": 1, "id": 1, "flow": "f", "operators": operators}))
    with caplog.at_level(logging.WARNING, logger="rheon"):
        latest = CheckpointStore(tmp_path).latest()
    assert latest is not None
    assert latest.operators["w"].objects == {"wm": 1}
    assert "checkpoint_unverified" in caplog.text


# -- write failures --------------------------------------------------------------------------------


def test_a_write_that_fails_for_lack_of_space_says_a_checkpoint_write_failed_and_names_the_file(tmp_path):
    """A full disk, made real for root too: tests run as root, whom a read-only chmod does not stop,
    but RLIMIT_FSIZE stops every process at the given file size with EFBIG (Python ignores SIGXFSZ),
    just as ENOSPC stops a write halfway through a file."""
    store = CheckpointStore(tmp_path)
    big = {"w": OperatorSnapshot("window", {}, {"panes": pl.DataFrame({"n": range(200_000)})}, {"wm": 1})}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
    try:
        with pytest.raises(CheckpointError) as info:
            store.write(1, {"flow": "f"}, big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EFBIG
    message = str(info.value)
    assert message.startswith(f"checkpoint 1 could not be written: writing {tmp_path}/.tmp-chk-00000001-")
    assert "/op-0000-panes.arrow failed: File too large. Free space on that disk" in message
    assert store.latest() is None  # the half-written directory is not a checkpoint
    store.write(1, {"flow": "f"}, big)  # and once there is room again, the same id is written
    assert store.verify(1) == []


def test_a_checkpoint_dir_that_cannot_be_a_directory_is_a_clear_error(tmp_path):
    """A file where the directory should be: fails as root too (unlike chmod)."""
    blocker = tmp_path / "ckpt"
    blocker.write_text("not a directory")
    with pytest.raises(
        CheckpointError,
        match=rf"checkpoint_dir '{blocker}' cannot be used: File exists \(a file is in the way\)\. Point checkpoint_dir to a directory",
    ):
        CheckpointStore(blocker)
    with pytest.raises(CheckpointError, match=rf"checkpoint_dir '{blocker}/sub' cannot be used: Not a directory"):
        CheckpointStore(blocker / "sub")


# -- trust -----------------------------------------------------------------------------------------


def test_a_new_checkpoint_dir_is_private_and_one_others_can_write_is_warned_about(tmp_path, caplog):
    CheckpointStore(tmp_path / "new")
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) & 0o077 == 0
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="rheon"):
        CheckpointStore(shared)
    assert f"checkpoint_dir_not_private path={shared} mode=0o777" in caplog.text
    assert "chmod 700" in caplog.text
