"""Keyed state for process functions: value, list and map state, with optional TTL.

All of one key's state lives in one dict (``{state name: cell}``); cells remember when they
were last written, so entries older than their TTL read as absent (and are dropped then), as
with Flink's processing-time state TTL. For checkpoints the keys are grouped into *key groups*
by a stable hash (the same in every process), the unit in which state will move between
workers.

Each kind stores its cells differently (a value is one ``(value, written_ms)`` cell, a list a
list of them, a map a dict of them), so an operator records the kind of each named state in
:class:`StateKinds` and saves it with its checkpoints: asking for a saved state as another kind
is a :class:`StateKindError`, not garbage read back. A TTL does not change the stored form
(every cell keeps its write time), so it may change between runs.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import Any

from rheon.core.errors import FlowError

__all__ = ["KEY_GROUPS", "ListState", "MapState", "StateKindError", "StateKinds", "ValueState", "key_group"]

KEY_GROUPS = 128


def key_group(key: Any, groups: int = KEY_GROUPS) -> int:
    """The key group of a key: stable across processes (unlike ``hash`` of a string).

    Examples
    --------
    >>> key_group("card-1") == key_group("card-1"), 0 <= key_group(("fr", 3)) < KEY_GROUPS
    (True, True)
    """
    return zlib.crc32(repr(key).encode()) % groups


_HOW = {"value": "ctx.state({!r})", "list": "ctx.state.list({!r})", "map": "ctx.state.map({!r})"}


class StateKindError(FlowError):
    """A named state is asked for as another kind than the one it holds (Flink's
    ``StateMigrationException``): the run stops rather than read its cells as the wrong kind.

    Examples
    --------
    >>> kinds = StateKinds("process 'p'"); kinds.declare("seen", "list"); kinds.declare("seen", "map")
    Traceback (most recent call last):
    ...
    rheon.state.keyed.StateKindError: process 'p': state 'seen' is used both as list state (ctx.state.list('seen')) and as map state (ctx.state.map('seen')). Give one of them another name.
    """


class StateKinds(dict[str, str]):
    """The kind ("value", "list" or "map") of each named state of one operator.

    A plain dict (so the check on every access is one lookup) that also remembers which kinds
    came from a checkpoint, for the error message.

    Examples
    --------
    >>> kinds = StateKinds("process 'p'")
    >>> kinds.restore({"n": "list"}); kinds.declare("total", "value"); dict(kinds)
    {'n': 'list', 'total': 'value'}
    >>> kinds.declare("n", "value")
    Traceback (most recent call last):
    ...
    rheon.state.keyed.StateKindError: process 'p': state 'n' is list state in the checkpoint this run resumed from, but the function now asks for value state (ctx.state('n')). Read it as ctx.state.list('n'), give the value state another name, or start from a new checkpoint_dir.
    """

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.restored: set[str] = set()

    def declare(self, name: str, kind: str) -> None:
        """Note that the code asks for ``name`` as ``kind``; raise if it holds another kind."""
        had = self.get(name)
        if had is None:
            self[name] = kind
            return
        if had == kind:
            return
        asked, saved = _HOW[kind].format(name), _HOW[had].format(name)
        if name in self.restored:
            msg = (
                f"{self.where}: state {name!r} is {had} state in the checkpoint this run resumed from, but the "
                f"function now asks for {kind} state ({asked}). Read it as {saved}, give the {kind} state "
                "another name, or start from a new checkpoint_dir."
            )
        else:
            msg = (
                f"{self.where}: state {name!r} is used both as {had} state ({saved}) and as {kind} state "
                f"({asked}). Give one of them another name."
            )
        raise StateKindError(msg)

    def snapshot(self) -> dict[str, str]:
        """What a checkpoint saves."""
        return dict(self)

    def restore(self, saved: dict[str, str]) -> None:
        """Take the kinds a checkpoint saved."""
        self.clear()
        self.update(saved)
        self.restored = set(saved)


# A cell is ``(value, written_ms)``: a plain tuple, so that pickling a million of them for a
# checkpoint stays in C (a small class with __getstate__ took 9x longer).
_Cell = tuple[Any, int]


class _Handle:
    """Base of state handles: bound to one key's state dict, one name, a TTL and a clock."""

    __slots__ = ("_cells", "_name", "_now", "_ttl_ms")

    def __init__(self, cells: dict[str, Any], name: str, ttl_ms: int | None, now: Callable[[], int]) -> None:
        self._cells = cells
        self._name = name
        self._ttl_ms = ttl_ms
        self._now = now

    def _expired(self, cell: _Cell) -> bool:
        return self._ttl_ms is not None and self._now() - cell[1] >= self._ttl_ms

    def clear(self) -> None:
        """Forget this state for the current key."""
        self._cells.pop(self._name, None)


class ValueState(_Handle):
    """One value per key.

    Examples
    --------
    >>> cells = {}
    >>> count = ValueState(cells, "count", None, lambda: 0, default=0)
    >>> count.get()
    0
    >>> count.set(count.get() + 1); count.get()
    1
    >>> count.clear(); count.get()
    0
    """

    __slots__ = ("_default",)

    def __init__(
        self, cells: dict[str, Any], name: str, ttl_ms: int | None, now: Callable[[], int], default: Any = None
    ) -> None:
        super().__init__(cells, name, ttl_ms, now)
        self._default = default

    def get(self) -> Any:
        """The value, or the default when unset or expired."""
        cell = self._cells.get(self._name)
        if cell is None:
            return self._default
        if self._expired(cell):
            del self._cells[self._name]
            return self._default
        return cell[0]

    def set(self, value: Any) -> None:
        """Set the value (and restart its TTL)."""
        self._cells[self._name] = (value, self._now())


class ListState(_Handle):
    """A list per key; with a TTL each element expires on its own.

    Examples
    --------
    >>> now = [0]
    >>> seen = ListState({}, "seen", 1000, lambda: now[0])
    >>> seen.append("a"); now[0] = 600; seen.append("b")
    >>> seen.get(), len(seen)
    (['a', 'b'], 2)
    >>> now[0] = 1200; seen.get()
    ['b']
    """

    __slots__ = ()

    def _live(self) -> list[_Cell]:
        cells: list[_Cell] | None = self._cells.get(self._name)
        if not cells:
            return []
        if self._ttl_ms is not None:
            fresh = [c for c in cells if not self._expired(c)]
            if len(fresh) != len(cells):
                if fresh:
                    self._cells[self._name] = fresh
                else:
                    del self._cells[self._name]
            return fresh
        return cells

    def get(self) -> list[Any]:
        """The elements, oldest first."""
        return [c[0] for c in self._live()]

    def append(self, value: Any) -> None:
        """Add an element at the end."""
        self._cells.setdefault(self._name, []).append((value, self._now()))

    def extend(self, values: list[Any]) -> None:
        """Add several elements at the end."""
        now = self._now()
        self._cells.setdefault(self._name, []).extend((v, now) for v in values)

    def set(self, values: list[Any]) -> None:
        """Replace the whole list."""
        now = self._now()
        if values:
            self._cells[self._name] = [(v, now) for v in values]
        else:
            self.clear()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.get())

    def __len__(self) -> int:
        return len(self._live())


class MapState(_Handle):
    """A dict per key; with a TTL each entry expires on its own.

    Examples
    --------
    >>> m = MapState({}, "m", None, lambda: 0)
    >>> m.put("a", 1); m.put("b", 2); m.remove("a")
    >>> m.get("a", -1), m.get("b"), dict(m.items()), "b" in m, len(m)
    (-1, 2, {'b': 2}, True, 1)
    """

    __slots__ = ()

    def _entries(self) -> dict[Any, _Cell]:
        entries: dict[Any, _Cell] | None = self._cells.get(self._name)
        if entries is None:
            return {}
        if self._ttl_ms is not None:
            stale = [k for k, c in entries.items() if self._expired(c)]
            for k in stale:
                del entries[k]
            if not entries:
                del self._cells[self._name]
        return entries

    def get(self, key: Any, default: Any = None) -> Any:
        """The value under ``key``, or ``default``."""
        cell = self._entries().get(key)
        return default if cell is None else cell[0]

    def put(self, key: Any, value: Any) -> None:
        """Set the value under ``key``."""
        self._cells.setdefault(self._name, {})[key] = (value, self._now())

    def remove(self, key: Any) -> None:
        """Delete ``key`` if present."""
        entries = self._cells.get(self._name)
        if entries is not None:
            entries.pop(key, None)
            if not entries:
                del self._cells[self._name]

    def items(self) -> list[tuple[Any, Any]]:
        """``(key, value)`` pairs."""
        return [(k, c[0]) for k, c in self._entries().items()]

    def keys(self) -> list[Any]:
        """The keys."""
        return list(self._entries())

    def values(self) -> list[Any]:
        """The values."""
        return [c[0] for c in self._entries().values()]

    def __contains__(self, key: object) -> bool:
        return key in self._entries()

    def __len__(self) -> int:
        return len(self._entries())
