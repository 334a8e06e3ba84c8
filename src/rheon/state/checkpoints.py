"""Checkpoints on disk: one directory per checkpoint, made visible by an atomic rename, every file
checksummed and verified before it is trusted.

::

    checkpoint_dir/
      chk-00000007/              a complete checkpoint
        manifest.json            written last: ids, source positions, operator signatures, and
                                 the size and SHA-256 of every file the checkpoint is made of
        op-0003.pkl              an operator's Python state
        op-0003-panes.arrow      an operator's frames (Arrow IPC)
      shared/                    files several checkpoints share (keyed-state bases and deltas,
                                 RocksDB checkpoints); each checkpoint's manifest lists those it uses
      .tmp-chk-00000008-<pid>/   being written; a crash leaves it behind and it is ignored
      damaged-chk-00000009-<t>/  a checkpoint found damaged at start-up, set aside for inspection

A checkpoint is written entirely inside a temporary directory, every file fsynced, the manifest
last; then the directory is renamed to ``chk-<id>`` and the parent directory fsynced. A crash at
any point leaves either the complete new checkpoint or none of it, so the last good one is never
spoiled.

Disks and people can still spoil a complete checkpoint later (a truncated copy, a bad sector, a
file deleted by hand). So the manifest records each file's size and SHA-256, and starts with the
SHA-256 of its own bytes. At start-up the newest checkpoint is verified before anything in it is
read; if it is damaged, the problem is logged and the next older intact checkpoint is used (the
newest ``keep`` complete checkpoints are retained, at least two). If none is intact, the flow
refuses to start with a :class:`~rheon.core.errors.CheckpointError`.

Checksums detect corruption, not tampering: whoever can write to the directory can rewrite a
manifest too, and pickled state runs code when it is loaded. A checkpoint directory must be
trusted (see docs/state-and-recovery.md).
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from rheon.core.errors import CheckpointError, FlowError
from rheon.state.shared import SharedFiles

__all__ = ["Checkpoint", "CheckpointStore", "OperatorSnapshot", "unpickle"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
_UNVERIFIED_FORMATS = (1,)  # written before checksums: read, with a warning, without verification
_PREFIX = "chk-"
_TMP = ".tmp-chk-"
_DAMAGED = "damaged-"
_MANIFEST = "manifest.json"
# The manifest opens with the SHA-256 of its own bytes (taken with these 64 characters left out),
# so one changed byte anywhere in it is caught before a field of it is believed.
_HEAD = b'{\n "manifest_sha256": "'
_DIGEST_LEN = 64


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _entry(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The manifest as JSON, opening with the SHA-256 of its own bytes.

    >>> raw = _manifest_bytes({"format": 2, "id": 1})
    >>> raw.startswith(_HEAD), _parse_manifest(raw)["id"]
    (True, 1)
    >>> _parse_manifest(raw.replace(b'"id": 1', b'"id": 2'))
    Traceback (most recent call last):
    ...
    rheon.state.checkpoints._Damaged: manifest.json does not match its own checksum
    """
    text = json.dumps({"manifest_sha256": "0" * _DIGEST_LEN, **manifest}, indent=1, default=str).encode()
    rest = text[len(_HEAD) + _DIGEST_LEN :]
    digest = hashlib.sha256(_HEAD + rest).hexdigest().encode()
    return _HEAD + digest + rest


class _Damaged(Exception):
    """A checkpoint's files are not what its manifest says (or the manifest itself is spoiled)."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def _parse_manifest(raw: bytes) -> dict[str, Any]:
    """The manifest's fields, after checking its own checksum; raises :class:`_Damaged`."""
    checked = raw.startswith(_HEAD) and raw[len(_HEAD) + _DIGEST_LEN : len(_HEAD) + _DIGEST_LEN + 1] == b'"'
    if checked:
        recorded = raw[len(_HEAD) : len(_HEAD) + _DIGEST_LEN].decode("ascii", "replace")
        if hashlib.sha256(_HEAD + raw[len(_HEAD) + _DIGEST_LEN :]).hexdigest() != recorded:
            problem = f"{_MANIFEST} does not match its own checksum"
            raise _Damaged(problem)
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        problem = f"{_MANIFEST} cannot be parsed ({type(exc).__name__}: {exc})"
        raise _Damaged(problem) from exc
    if not isinstance(manifest, dict):
        problem = f"{_MANIFEST} holds a {type(manifest).__name__}, not a manifest"
        raise _Damaged(problem)
    if not checked and manifest.get("format") not in _UNVERIFIED_FORMATS:
        problem = f"{_MANIFEST} has no checksum of its own (its first line is damaged)"
        raise _Damaged(problem)
    manifest.pop("manifest_sha256", None)
    return manifest


def _unreadable(label: str, exc: OSError) -> str:
    return (
        f"{label} is missing"
        if isinstance(exc, FileNotFoundError)
        else f"{label} cannot be read ({exc.strerror or exc})"
    )


def _compare(label: str, size: int, digest: str, expected: Mapping[str, Any]) -> str | None:
    """What is wrong with a file of ``size`` bytes and SHA-256 ``digest``, or ``None``."""
    if size < expected["size"]:
        return f"{label} is truncated ({size} of {expected['size']} bytes)"
    if size > expected["size"]:
        return f"{label} has {size} bytes, {expected['size']} expected"
    if digest != expected["sha256"]:
        return f"{label} does not match its checksum (sha256 {digest[:12]}..., recorded {expected['sha256'][:12]}...)"
    return None


def _check_file(path: Path, label: str, expected: Mapping[str, Any]) -> str | None:
    """What is wrong with one file compared with its manifest entry, or ``None``."""
    try:
        size = path.stat().st_size
        if size != expected["size"]:
            return _compare(label, size, "", expected)
        digest = _sha256_file(path)
    except OSError as exc:
        return _unreadable(label, exc)
    return _compare(label, size, digest, expected)


def unpickle(data: bytes) -> Any:
    """Unpickle with the cyclic GC paused: rebuilding a million small dicts otherwise triggers
    hundreds of full collections (2.6 s instead of 0.5 s for 1M keys of process state).

    >>> import pickle
    >>> unpickle(pickle.dumps({"k": [1, 2]}))
    {'k': [1, 2]}
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return pickle.loads(data)
    finally:
        if enabled:
            gc.enable()


@dataclass
class OperatorSnapshot:
    """What one operator (or source) saved: frames and Python objects, plus its signature."""

    kind: str
    signature: Mapping[str, Any]
    frames: dict[str, pl.DataFrame]
    objects: dict[str, Any]
    shared: list[str] = field(default_factory=list)


@dataclass
class Checkpoint:
    """A complete, verified checkpoint read back from disk.

    Examples
    --------
    >>> import tempfile
    >>> store = CheckpointStore(tempfile.mkdtemp())
    >>> snap = OperatorSnapshot("window", {"keys": ["k"]}, {"panes": pl.DataFrame({"k": [1]})}, {"wm": 5})
    >>> store.write(1, {"flow": "f"}, {"per_key": snap}).name
    'chk-00000001'
    >>> cp = store.latest()
    >>> cp.id, cp.meta["flow"], cp.operators["per_key"].objects["wm"], cp.operators["per_key"].frames["panes"].height
    (1, 'f', 5, 1)
    """

    id: int
    path: Path
    meta: dict[str, Any]
    operators: dict[str, OperatorSnapshot]


class CheckpointStore:
    """Reads and writes the checkpoints of one flow in a directory.

    ``keep`` complete checkpoints are retained (at least two, so that a damaged newest one has an
    older one to fall back on); older ones and abandoned temporary directories are deleted after
    each successful write. A new directory is created readable and writable by its owner only.

    Examples
    --------
    >>> import tempfile
    >>> store = CheckpointStore(tempfile.mkdtemp(), keep=2)
    >>> for n in (1, 2, 3):
    ...     _ = store.write(n, {"flow": "f"}, {"w": OperatorSnapshot("window", {}, {}, {"n": n})})
    >>> sorted(p.name for p in store.directory.iterdir()), store.verify(3)
    (['chk-00000002', 'chk-00000003'], [])
    >>> (store.directory / "chk-00000003" / "op-0000.pkl").write_bytes(b"spoiled")
    7
    >>> store.verify(3)
    ['op-0000.pkl is truncated (7 of 21 bytes)']
    >>> store.latest().id  # logs a warning and sets chk-00000003 aside
    2
    """

    def __init__(self, directory: str | Path, *, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.keep = max(keep, 2)
        # SHA-256 of shared files by (device, inode, size, mtime): shared files never change once
        # written, and a RocksDB checkpoint hard-links the same files again and again.
        self._digests: dict[tuple[int, int, int, int], str] = {}
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            info = self.directory.stat()
        except OSError as exc:
            msg = (
                f"checkpoint_dir {str(self.directory)!r} cannot be used: {exc.strerror or exc}"
                f"{' (a file is in the way)' if isinstance(exc, FileExistsError | NotADirectoryError) else ''}. "
                "Point checkpoint_dir to a directory this process can create and write."
            )
            raise CheckpointError(msg) from exc
        self._warn_if_others_can_write(info)

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.directory)!r})"

    def _warn_if_others_can_write(self, info: os.stat_result) -> None:
        others = bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
        foreign = hasattr(os, "geteuid") and info.st_uid != os.geteuid()
        if others or foreign:
            log.warning(
                "checkpoint_dir_not_private path=%s mode=%s owner_uid=%d: whoever can write here can make "
                "this flow run code when it resumes (checkpoints hold pickled state); make it owned by "
                "the flow's user and chmod 700 it",
                self.directory, oct(stat.S_IMODE(info.st_mode)), info.st_uid,
            )  # fmt: skip

    # -- listing -------------------------------------------------------------------------------

    def _path(self, checkpoint_id: int) -> Path:
        return self.directory / f"{_PREFIX}{checkpoint_id:08d}"

    def _ids(self) -> list[int]:
        """Ids of every ``chk-`` directory, complete or not."""
        ids = []
        for entry in self.directory.iterdir():
            if entry.name.startswith(_PREFIX) and entry.is_dir():
                try:
                    ids.append(int(entry.name[len(_PREFIX) :]))
                except ValueError:
                    continue
        return sorted(ids)

    def _complete_ids(self) -> list[int]:
        """Ids of the checkpoints that have a manifest (not verified)."""
        return [cid for cid in self._ids() if (self._path(cid) / _MANIFEST).is_file()]

    def latest_id(self) -> int | None:
        """The id of the newest complete checkpoint, if any (not verified)."""
        ids = self._complete_ids()
        return ids[-1] if ids else None

    # -- writing -------------------------------------------------------------------------------

    def write(self, checkpoint_id: int, meta: Mapping[str, Any], operators: Mapping[str, OperatorSnapshot]) -> Path:
        """Write checkpoint ``checkpoint_id`` atomically and return its directory.

        Raises :class:`~rheon.core.errors.CheckpointError` naming the file when a write fails
        (a full disk, a directory made read-only).
        """
        final = self._path(checkpoint_id)
        if final.exists():
            msg = f"checkpoint {checkpoint_id} already exists in {self.directory}"
            raise FlowError(msg)
        tmp = self.directory / f"{_TMP}{checkpoint_id:08d}-{os.getpid()}"
        current = tmp
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            files: dict[str, dict[str, Any]] = {}
            entries: dict[str, Any] = {}
            for index, (name, snap) in enumerate(operators.items()):
                stem = f"op-{index:04d}"
                frame_files = {}
                for key, frame in snap.frames.items():
                    file = f"{stem}-{key}.arrow"
                    buffer = io.BytesIO()
                    frame.write_ipc(buffer)
                    current = tmp / file
                    _write_file(current, buffer.getvalue())
                    files[file] = _entry(buffer.getvalue())
                    frame_files[key] = file
                object_file = None
                if snap.objects:
                    object_file = f"{stem}.pkl"
                    data = pickle.dumps(snap.objects, protocol=pickle.HIGHEST_PROTOCOL)
                    current = tmp / object_file
                    _write_file(current, data)
                    files[object_file] = _entry(data)
                entries[name] = {
                    "kind": snap.kind,
                    "signature": snap.signature,
                    "frames": frame_files,
                    "objects": object_file,
                    "shared": snap.shared,
                }
            current = self.shared_dir
            shared = self._shared_entries(operators.values())
            manifest = {
                "format": FORMAT_VERSION,
                "id": checkpoint_id,
                **meta,
                "operators": entries,
                "files": files,
                "shared_files": shared,
            }
            current = tmp / _MANIFEST
            _write_file(current, _manifest_bytes(manifest))
            current = tmp
            _fsync_dir(tmp)
            os.rename(tmp, final)
            current = self.directory
            _fsync_dir(self.directory)
        except OSError as exc:
            where = exc.filename if isinstance(exc.filename, str) else str(current)
            msg = (
                f"checkpoint {checkpoint_id} could not be written: writing {where} failed: "
                f"{exc.strerror or exc}. Free space on that disk or make {self.directory} writable (or point "
                "checkpoint_dir elsewhere); the flow resumes from the last complete checkpoint when restarted."
            )
            raise CheckpointError(msg) from exc
        self.cleanup()
        return final

    def _shared_entries(self, snaps: Iterable[OperatorSnapshot]) -> dict[str, dict[str, Any]]:
        """Size and SHA-256 of every shared file the snapshots refer to, by path under ``shared/``."""
        entries: dict[str, dict[str, Any]] = {}
        used: dict[tuple[int, int, int, int], str] = {}
        for snap in snaps:
            for name in snap.shared:
                for path in self._shared_files(name):
                    info = path.stat()
                    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
                    digest = self._digests.get(key) or _sha256_file(path)
                    used[key] = digest
                    entries[path.relative_to(self.shared_dir).as_posix()] = {"size": info.st_size, "sha256": digest}
        self._digests = used
        return entries

    def _shared_files(self, name: str) -> list[Path]:
        top = self.shared_dir / name
        if not top.is_dir():
            return [top]  # a missing file fails when it is hashed, naming it
        return sorted(p for p in top.rglob("*") if p.is_file())

    # -- reading -------------------------------------------------------------------------------

    def verify(self, checkpoint_id: int) -> list[str]:
        """What is wrong with checkpoint ``checkpoint_id``: an empty list if it is intact.

        Every file the manifest lists must exist with the recorded size and SHA-256.
        """
        try:
            self._verified(checkpoint_id)
        except _Damaged as exc:
            return exc.problems
        return []

    def _verified(self, checkpoint_id: int) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The manifest and the bytes of the checkpoint's own files, all verified."""
        path = self._path(checkpoint_id)
        try:
            raw = (path / _MANIFEST).read_bytes()
        except FileNotFoundError:
            problem = f"{_MANIFEST} is missing"
            raise _Damaged(problem) from None
        except OSError as exc:
            problem = f"{_MANIFEST} cannot be read ({exc.strerror or exc})"
            raise _Damaged(problem) from exc
        manifest = _parse_manifest(raw)
        if manifest.get("id") != checkpoint_id:
            problem = f"{_MANIFEST} is that of checkpoint {manifest.get('id')!r}, not {checkpoint_id}"
            raise _Damaged(problem)
        problems: list[str] = []
        contents: dict[str, bytes] = {}
        if manifest.get("format") in _UNVERIFIED_FORMATS:
            log.warning(
                "checkpoint_unverified path=%s format=%s: written by an older rheon without checksums, so "
                "its files are read without being verified",
                path, manifest.get("format"),
            )  # fmt: skip
            try:
                listed = [
                    file
                    for entry in manifest["operators"].values()
                    for file in [*entry["frames"].values(), *([entry["objects"]] if entry["objects"] else [])]
                ]
            except (KeyError, TypeError, AttributeError) as exc:
                problem = f"{_MANIFEST} is incomplete ({type(exc).__name__}: {exc})"
                raise _Damaged(problem) from exc
            for file in listed:
                try:
                    contents[file] = (path / file).read_bytes()
                except OSError as exc:
                    problems.append(_unreadable(file, exc))
        else:
            for file, expected in manifest.get("files", {}).items():
                try:
                    data = (path / file).read_bytes()
                except OSError as exc:
                    problems.append(_unreadable(file, exc))
                    continue
                wrong = _compare(file, len(data), hashlib.sha256(data).hexdigest(), expected)
                if wrong is None:
                    contents[file] = data
                else:
                    problems.append(wrong)
            for file, expected in manifest.get("shared_files", {}).items():
                wrong = _check_file(self.shared_dir / file, f"shared/{file}", expected)
                if wrong is not None:
                    problems.append(wrong)
                else:
                    info = (self.shared_dir / file).stat()
                    self._digests[(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)] = expected["sha256"]
        if problems:
            raise _Damaged(*problems)
        return manifest, contents

    def load(self, checkpoint_id: int) -> Checkpoint:
        """Read checkpoint ``checkpoint_id``, verifying every file first.

        Raises :class:`~rheon.core.errors.CheckpointError` if it is damaged.
        """
        path = self._path(checkpoint_id)
        try:
            return self._load(checkpoint_id)
        except _Damaged as exc:
            msg = f"checkpoint {path} is damaged: {exc}. Start from an older checkpoint or a new checkpoint_dir."
            raise CheckpointError(msg) from None

    def _load(self, checkpoint_id: int) -> Checkpoint:
        path = self._path(checkpoint_id)
        manifest, contents = self._verified(checkpoint_id)
        if manifest.get("format") not in (FORMAT_VERSION, *_UNVERIFIED_FORMATS):
            msg = f"checkpoint {path} has format {manifest.get('format')}, this rheon reads {FORMAT_VERSION}"
            raise FlowError(msg)
        verified = manifest.get("format") == FORMAT_VERSION
        operators = {}
        for name, entry in manifest.pop("operators").items():
            file = ""
            try:
                frames = {}
                for key, file in entry["frames"].items():
                    frames[key] = pl.read_ipc(contents[file])
                objects = {}
                if entry["objects"]:
                    file = entry["objects"]
                    objects = unpickle(contents[file])
            except Exception as exc:
                problem = f"{file} cannot be read ({type(exc).__name__}: {exc})"
                if not verified:
                    raise _Damaged(problem) from exc
                msg = (
                    f"checkpoint {path}: {problem}, although it matches its checksum, so it was written "
                    "like this: by other code or another rheon version. Resume with the code that wrote it, "
                    "or start from a new checkpoint_dir."
                )
                raise CheckpointError(msg) from exc
            operators[name] = OperatorSnapshot(entry["kind"], entry["signature"], frames, objects, entry["shared"])
        for key in ("files", "shared_files"):
            manifest.pop(key, None)
        return Checkpoint(checkpoint_id, path, manifest, operators)

    def latest(self) -> Checkpoint | None:
        """The newest intact checkpoint, or ``None`` when there is none at all.

        Checkpoints newer than it that are damaged (a file missing, truncated or changed, or no
        readable manifest) are reported in a warning each and moved to ``damaged-chk-...`` for
        inspection, so that the flow can write new checkpoints with their ids. If every
        checkpoint is damaged, raises :class:`~rheon.core.errors.CheckpointError`.
        """
        damaged: list[tuple[int, list[str]]] = []
        for checkpoint_id in reversed(self._ids()):
            try:
                checkpoint = self._load(checkpoint_id)
            except _Damaged as exc:
                log.warning(
                    "checkpoint_damaged path=%s problem=%r: skipping it, looking for an older intact checkpoint",
                    self._path(checkpoint_id), str(exc),
                )  # fmt: skip
                damaged.append((checkpoint_id, exc.problems))
                continue
            if damaged:
                self._set_aside(damaged, checkpoint)
            return checkpoint
        if not damaged:
            return None
        details = "; ".join(f"{_PREFIX}{cid:08d}: {', '.join(problems)}" for cid, problems in damaged)
        msg = (
            f"checkpoint_dir {self.directory}: no intact checkpoint to resume from ({details}). "
            "Start with a new checkpoint_dir, or delete the damaged chk-* directories to start from the "
            "beginning of the input (sinks then write again what they committed before)."
        )
        raise CheckpointError(msg)

    def _set_aside(self, damaged: list[tuple[int, list[str]]], restored: Checkpoint) -> None:
        for checkpoint_id, _ in damaged:
            source = self._path(checkpoint_id)
            target = self.directory / f"{_DAMAGED}{source.name}-{time.time_ns() // 1_000_000}"
            try:
                os.rename(source, target)
            except OSError as exc:
                msg = (
                    f"checkpoint {source} is damaged and could not be moved to {target.name}: "
                    f"{exc.strerror or exc}. Make {self.directory} writable, or delete {source.name}."
                )
                raise CheckpointError(msg) from exc
            log.warning(
                "checkpoint_fallback damaged=%s moved_to=%s restoring=%s: the flow resumes from the older "
                "checkpoint, so output that sinks committed after it is produced again; a sink that cannot "
                "take committed output back (Kafka, PostgreSQL appends) may then hold it twice",
                source.name, target.name, restored.path.name,
            )  # fmt: skip

    # -- housekeeping --------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Delete abandoned temporary directories and all but the newest ``keep`` checkpoints."""
        for entry in self.directory.iterdir():
            if entry.name.startswith(_TMP) and not entry.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(entry, ignore_errors=True)
        retained = self._complete_ids()[-self.keep :]
        for old in self._ids():
            if retained and old < retained[0]:
                shutil.rmtree(self._path(old), ignore_errors=True)
        keep: set[str] = set()
        for cid in retained:
            try:
                manifest = _parse_manifest((self._path(cid) / _MANIFEST).read_bytes())
            except (OSError, _Damaged) as exc:
                log.warning("checkpoint_damaged path=%s problem=%r", self._path(cid), str(exc))
                continue
            for entry in manifest["operators"].values():
                keep.update(entry.get("shared", []))
        SharedFiles.collect_garbage(self.shared_dir, keep)

    @property
    def shared_dir(self) -> Path:
        """Where operators keep state files shared between checkpoints."""
        return self.directory / "shared"

    def shared_for(self, owner: str) -> SharedFiles:
        """A :class:`SharedFiles` for one operator's next snapshot (or its restore)."""
        return SharedFiles(self.shared_dir, owner)
