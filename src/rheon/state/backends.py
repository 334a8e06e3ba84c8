"""Keyed-state backends: where a keyed operator keeps each key's state.

A key's state is one dict (``{state name: cell}`` for process functions, ``{"acc": ...}`` for
reduce). Operators ask for it with :meth:`KeyedStateBackend.cells`, change it in place, and call
:meth:`~KeyedStateBackend.end_batch` after each batch.

* :class:`MemoryBackend` (the default) keeps everything in a Python dict. Its checkpoints are
  incremental: a full *base* now and then, and in between a *delta* of the keys that changed.

State is stored per *key group* (a stable hash of the key into 128 groups, see
:func:`~rheon.state.keyed.key_group`): checkpoint files hold one section per key group, and
RocksDB keys start with their key group, so that a worker can restore just the key groups it
owns.
* :class:`RocksDBBackend` keeps state on disk in RocksDB (``pip install 'rheon[rocksdb]'``), with
  a bounded in-memory cache, for state larger than memory. A checkpoint is a RocksDB checkpoint:
  hard links to its immutable files, so it costs little whatever the state's size.

Choose per flow: ``rh.Flow(name, state_backend="rocksdb")``. Both hold the same thing (each key's
state dict), so a checkpoint written by one backend restores into the other: a flow can switch
backends between runs, like Flink's savepoints in the canonical format.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rheon.core.errors import FlowError
from rheon.core.extras import import_extra
from rheon.state.checkpoints import unpickle
from rheon.state.keyed import KEY_GROUPS, key_group
from rheon.state.shared import SharedFiles

__all__ = ["BACKENDS", "KeyedStateBackend", "MemoryBackend", "RocksDBBackend", "make_backend"]

BACKENDS = ("memory", "rocksdb")
assert KEY_GROUPS <= 256, "RocksDB keys store the key group in one byte"

log = logging.getLogger(__name__)


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


class KeyedStateBackend(ABC):
    """Per-operator keyed state."""

    @abstractmethod
    def cells(self, key: Any) -> dict[str, Any]:
        """The mutable state dict of ``key`` (empty if new); the key is marked changed."""

    @abstractmethod
    def end_batch(self) -> None:
        """A batch is done: drop keys whose state is empty, write back what is cached."""

    @abstractmethod
    def snapshot(self, files: SharedFiles) -> dict[str, Any]:
        """Write the state for a checkpoint (into ``files``); return what restore needs."""

    @abstractmethod
    def restore(self, saved: dict[str, Any], files: SharedFiles) -> None:
        """Load the state a snapshot wrote."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of keys with state."""

    @abstractmethod
    def items(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Every key with state and its state dict (for inspection, between batches)."""

    def estimate(self) -> tuple[int, int | None]:
        """Keys with state and bytes, cheaply (for metrics): exact keys and unknown bytes by default."""
        return len(self), None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and handles."""


class MemoryBackend(KeyedStateBackend):
    """State in a dict; incremental checkpoints (base + deltas of changed keys).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> backend = MemoryBackend()
    >>> backend.cells("a")["n"] = (1, 0); backend.end_batch()
    >>> files = SharedFiles(Path(tempfile.mkdtemp()), "op")
    >>> saved = backend.snapshot(files)              # first checkpoint: a base
    >>> backend.cells("b")["n"] = (2, 0); backend.end_batch()
    >>> saved = backend.snapshot(files)              # then a delta with just "b"
    >>> [n.split("-")[1] for n in saved["chain"]]
    ['base', 'delta']
    >>> again = MemoryBackend(); again.restore(saved, files); sorted(again.data)
    ['a', 'b']
    """

    MAX_DELTAS = 16

    def __init__(self) -> None:
        self.data: dict[Any, dict[str, Any]] = {}
        self.changed: set[Any] = set()
        self.chain: list[str] = []

    def cells(self, key: Any) -> dict[str, Any]:
        self.changed.add(key)
        found = self.data.get(key)
        if found is None:
            found = self.data[key] = {}
        return found

    def end_batch(self) -> None:
        data = self.data
        for key in [k for k in self.changed if not data.get(k, True)]:
            del data[key]

    def snapshot(self, files: SharedFiles) -> dict[str, Any]:
        self.end_batch()
        full = not self.chain or len(self.chain) > self.MAX_DELTAS or len(self.changed) * 2 > len(self.data)
        if full:
            self.chain = [files.write("base", _dumps(_by_key_group(self.data.items())))]
        elif self.changed:
            delta = _by_key_group((key, self.data.get(key)) for key in self.changed)
            self.chain.append(files.write("delta", _dumps(delta)))
        files.refer(self.chain)
        self.changed = set()
        return {"backend": "memory", "chain": list(self.chain)}

    def restore(self, saved: dict[str, Any], files: SharedFiles, key_groups: set[int] | None = None) -> None:
        """Load a snapshot (of either backend); with ``key_groups``, only those key groups."""
        if _written_by(saved, files) == "rocksdb":
            _log_switch("rocksdb", "memory", files)
            self.chain = []  # the next checkpoint writes a base
            self.data = dict(_read_rocksdb(files.path(saved["dir"]), key_groups))
        else:
            self.chain = list(saved["chain"])
            self.data = _read_chain(self.chain, files, key_groups)
        self.changed = set()

    def __len__(self) -> int:
        return len(self.data)

    def items(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        return iter(list(self.data.items()))


class RocksDBBackend(KeyedStateBackend):
    """State on disk in RocksDB, through a bounded write-back cache of recently used keys.

    Keys and state dicts are pickled. Checkpoints are RocksDB checkpoints (hard links to
    immutable files), so they are incremental on disk and fast for any state size.
    """

    CACHE_KEYS = 100_000

    def __init__(self, directory: Path | None = None) -> None:
        rocksdict = import_extra("rocksdict", user="state_backend='rocksdb'", package="rocksdict", extra="rocksdb")
        self._rocksdict = rocksdict
        self._own_dir = directory is None
        if directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="rheon-rocksdb-"))
        else:
            # A working copy left by an earlier process is stale: state comes from checkpoints.
            shutil.rmtree(directory, ignore_errors=True)
            directory.parent.mkdir(parents=True, exist_ok=True)
            self.directory = directory
        self.db: Any = self._open(self.directory)
        self.cache: dict[Any, dict[str, Any]] = {}
        self.db_keys: dict[Any, bytes] = {}
        self.changed: set[Any] = set()

    def _open(self, path: Path) -> Any:
        options = self._rocksdict.Options(raw_mode=True)
        return self._rocksdict.Rdict(str(path), options=options)

    def cells(self, key: Any) -> dict[str, Any]:
        self.changed.add(key)
        found = self.cache.get(key)
        if found is None:
            db_key = self.db_keys[key] = _db_key(key)
            raw = self.db.get(db_key)
            found = self.cache[key] = unpickle(raw) if raw is not None else {}
        return found

    def end_batch(self) -> None:
        db, db_keys = self.db, self.db_keys
        for key in self.changed:
            value = self.cache.get(key)
            if value:
                db[db_keys[key]] = _dumps(value)
            else:
                db.delete(db_keys[key])
        self.changed = set()
        if len(self.cache) > self.CACHE_KEYS:
            self.cache = {}
            self.db_keys = {}

    def snapshot(self, files: SharedFiles) -> dict[str, Any]:
        self.end_batch()
        self.db.flush()
        name, path = files.new_dir("rocksdb")
        self._rocksdict.Checkpoint(self.db).create_checkpoint(str(path))
        return {"backend": "rocksdb", "dir": name}

    def restore(self, saved: dict[str, Any], files: SharedFiles) -> None:
        """Load a snapshot: a RocksDB checkpoint, or the files of a memory-backend one."""
        written_by = _written_by(saved, files)
        self.db.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        if written_by == "rocksdb":
            source = files.path(saved["dir"])
            shutil.copytree(source, self.directory, copy_function=_link_or_copy)
            self.db = self._open(self.directory)
        else:
            _log_switch("memory", "rocksdb", files)
            self.db = self._open(self.directory)
            batch = self._rocksdict.WriteBatch(raw_mode=True)
            for key, value in _read_chain(saved["chain"], files, None).items():
                batch.put(_db_key(key), _dumps(value))
                if len(batch) >= 10_000:
                    self.db.write(batch)
                    batch = self._rocksdict.WriteBatch(raw_mode=True)
            self.db.write(batch)
        self.cache = {}
        self.db_keys = {}
        self.changed = set()

    def __len__(self) -> int:
        self.end_batch()
        return sum(1 for _ in self.db.keys())  # noqa: SIM118 - an Rdict, not a dict

    def items(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        self.end_batch()
        for raw_key, raw_value in self.db.items():
            yield unpickle(raw_key[1:]), unpickle(raw_value)

    def estimate(self) -> tuple[int, int | None]:
        """RocksDB's own estimates of keys and live bytes: no scan (a scan a second would cost
        as much as the state is large)."""
        self.end_batch()
        keys = self.db.property_int_value("rocksdb.estimate-num-keys")
        on_disk = self.db.property_int_value("rocksdb.estimate-live-data-size")
        in_memory = self.db.property_int_value("rocksdb.cur-size-all-mem-tables")
        if on_disk is None and in_memory is None:
            return int(keys or 0), None
        return int(keys or 0), int(on_disk or 0) + int(in_memory or 0)

    def close(self) -> None:
        self.db.close()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)


def _written_by(saved: dict[str, Any], files: SharedFiles) -> str:
    """Which backend wrote a snapshot (checkpoints older than the "backend" field tell by shape)."""
    backend = saved.get("backend")
    if backend is None:
        backend = "memory" if "chain" in saved else "rocksdb" if "dir" in saved else None
    if backend not in BACKENDS:
        msg = (
            f"'{files.owner}': its keyed state in the checkpoint has a format this rheon does not read "
            f"(backend {backend!r}, fields {sorted(saved)}). Restore it with the rheon that wrote it, "
            "or start from a new checkpoint_dir."
        )
        raise FlowError(msg)
    return str(backend)


def _log_switch(was: str, now: str, files: SharedFiles) -> None:
    log.info("state_backend_changed operator=%s checkpoint_backend=%s backend=%s", files.owner, was, now)


def _read_chain(chain: list[str], files: SharedFiles, key_groups: set[int] | None) -> dict[Any, dict[str, Any]]:
    """The state a memory-backend checkpoint holds: its base with the deltas applied."""
    data: dict[Any, dict[str, Any]] = {}
    for name in chain:
        for group, part in unpickle(files.read(name)).items():
            if key_groups is not None and group not in key_groups:
                continue
            for key, value in part.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
    return data


def _read_rocksdb(source: Path, key_groups: set[int] | None) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The ``(key, state)`` pairs of a RocksDB-backend checkpoint, read from a scratch copy (opening
    RocksDB writes to its directory, and the checkpoint must stay as it is)."""
    rocksdict = import_extra(
        "rocksdict", user="restoring state written by state_backend='rocksdb'", package="rocksdict", extra="rocksdb"
    )
    scratch = Path(tempfile.mkdtemp(prefix="rheon-rocksdb-read-")) / "db"
    try:
        shutil.copytree(source, scratch, copy_function=_link_or_copy)
        db = rocksdict.Rdict(str(scratch), options=rocksdict.Options(raw_mode=True))
        try:
            for raw_key, raw_value in db.items():
                if key_groups is None or raw_key[0] in key_groups:
                    yield unpickle(raw_key[1:]), unpickle(raw_value)
        finally:
            db.close()
    finally:
        shutil.rmtree(scratch.parent, ignore_errors=True)


def _by_key_group(items: Iterable[tuple[Any, Any]]) -> dict[int, dict[Any, Any]]:
    groups: dict[int, dict[Any, Any]] = {}
    for key, value in items:
        group = key_group(key)
        section = groups.get(group)
        if section is None:
            section = groups[group] = {}
        section[key] = value
    return groups


def _db_key(key: Any) -> bytes:
    """A RocksDB key: the key group (one byte, so each group is one contiguous range), then the
    pickled key."""
    return bytes((key_group(key),)) + _dumps(key)


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link immutable RocksDB files (instant); copy the ones RocksDB may rewrite."""
    name = os.path.basename(src)
    if name.endswith(".sst"):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def make_backend(kind: str, directory: Path | None = None) -> KeyedStateBackend:
    """The backend called ``kind`` ("memory" or "rocksdb")."""
    if kind == "memory":
        return MemoryBackend()
    if kind == "rocksdb":
        return RocksDBBackend(directory)
    msg = f"state_backend must be one of {', '.join(BACKENDS)} (got {kind!r})"
    raise FlowError(msg)
