"""Files shared between checkpoints, so that a checkpoint only writes what changed.

An operator with large state writes immutable files (a full base, then deltas; or RocksDB
checkpoint directories of hard-linked files) into ``checkpoint_dir/shared/`` and names, in its
checkpoint, the files its state is made of. After each checkpoint the store deletes the shared
files that no retained checkpoint names any more. Files written by a checkpoint that crashed
before completing are named by none and go the same way.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

__all__ = ["SharedFiles"]


class SharedFiles:
    """Where one operator reads and writes its shared state files, and which it refers to.

    Examples
    --------
    >>> import tempfile
    >>> files = SharedFiles(Path(tempfile.mkdtemp()), "p")
    >>> name = files.write("base", b"state")
    >>> files.read(name), files.referenced == [name]
    (b'state', True)
    """

    def __init__(self, directory: Path, owner: str) -> None:
        self.directory = directory
        self.owner = owner
        self.referenced: list[str] = []
        directory.mkdir(parents=True, exist_ok=True)

    def _new_name(self, kind: str) -> str:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.owner)[:40]
        return f"{safe}-{kind}-{uuid.uuid4().hex[:12]}"

    def write(self, kind: str, data: bytes) -> str:
        """Write a new immutable file durably; it is referred to by this checkpoint."""
        name = self._new_name(kind)
        tmp = self.directory / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, self.directory / name)
        self.referenced.append(name)
        return name

    def new_dir(self, kind: str) -> tuple[str, Path]:
        """A name and a path (not yet existing) for a directory this checkpoint will refer to."""
        name = self._new_name(kind)
        self.referenced.append(name)
        return name, self.directory / name

    def refer(self, names: list[str]) -> None:
        """Say that this checkpoint's state is also made of these existing files."""
        for name in names:
            if name not in self.referenced:
                self.referenced.append(name)

    def read(self, name: str) -> bytes:
        return (self.directory / name).read_bytes()

    def path(self, name: str) -> Path:
        return self.directory / name

    @staticmethod
    def collect_garbage(directory: Path, keep: set[str]) -> None:
        """Delete every shared file or directory not in ``keep``."""
        if not directory.is_dir():
            return
        for entry in directory.iterdir():
            name = entry.name
            if name in keep:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
