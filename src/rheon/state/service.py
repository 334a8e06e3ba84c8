"""One keyed state and timer service for the operators that keep state per key.

Process functions and CEP (and, later, windows and joins) hold the same two things per key: a
state dict in a :class:`~rheon.state.backends.KeyedStateBackend`, and timers. Both are saved per
*key group* (see :func:`~rheon.state.keyed.key_group`), so that a worker restoring some key
groups takes just their state and timers.

A timer is ``(time, key)``: registering one that exists does nothing, deleting one that does not
exist does nothing, and timers due together fire in time order, then in registration order, so
what an operator emits never depends on how its input was batched.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from operator import itemgetter
from typing import Any

from rheon.core.metrics import StateSize
from rheon.state.backends import KeyedStateBackend, MemoryBackend
from rheon.state.keyed import key_group
from rheon.state.shared import SharedFiles

__all__ = ["KeyedService", "KeyedTimers"]


class KeyedTimers:
    """Timers of one domain (event time or processing time) for many keys.

    Examples
    --------
    >>> timers = KeyedTimers()
    >>> timers.register(5, "a"); timers.register(3, "b"); timers.register(5, "a"); timers.register(9, "a")
    >>> timers.delete(9, "a")
    >>> timers.next_time(), len(timers)
    (3, 2)
    >>> list(timers.due(6))
    [(3, 'b'), (5, 'a')]
    >>> timers.next_time() is None
    True
    """

    __slots__ = ("heap", "live", "seq")

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, Any]] = []
        self.live: set[tuple[int, Any]] = set()
        self.seq = 0

    def register(self, at: int, key: Any) -> None:
        """Fire for ``key`` once time reaches ``at`` (once, however often it is registered)."""
        if (at, key) in self.live:
            return
        self.live.add((at, key))
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, key))

    def delete(self, at: int, key: Any) -> None:
        """Cancel the timer ``(at, key)`` if there is one."""
        self.live.discard((at, key))

    def next_time(self) -> int | None:
        """When the next live timer is due (``None`` if none is)."""
        heap, live = self.heap, self.live
        while heap and (heap[0][0], heap[0][2]) not in live:
            heapq.heappop(heap)  # deleted
        return heap[0][0] if heap else None

    def due(self, upto: int) -> Iterator[tuple[int, Any]]:
        """Pop and yield the live timers due at or before ``upto``, in firing order.

        Timers registered while iterating fire in the same pass if they are due.
        """
        heap, live = self.heap, self.live
        while heap and heap[0][0] <= upto:
            at, _, key = heapq.heappop(heap)
            if (at, key) not in live:
                continue
            live.discard((at, key))
            yield at, key

    def __len__(self) -> int:
        return len(self.live)

    def snapshot(self) -> dict[int, list[tuple[int, int, Any]]]:
        """Live timers as ``{key group: [(time, seq, key), ...]}``; ``seq`` keeps the firing order
        of timers due at the same time.

        >>> t = KeyedTimers(); t.register(5, "a"); t.register(3, "b"); t.snapshot()
        {57: [(3, 2, 'b')], 122: [(5, 1, 'a')]}
        """
        groups: dict[int, list[tuple[int, int, Any]]] = {}
        for at, seq, key in sorted(self.heap, key=itemgetter(0, 1)):
            if (at, key) in self.live:
                groups.setdefault(key_group(key), []).append((at, seq, key))
        return groups

    def restore(
        self, saved: dict[int, list[tuple[int, int, Any]]] | list[tuple[int, Any]], key_groups: set[int] | None = None
    ) -> None:
        """Load what :meth:`snapshot` saved (only ``key_groups`` if given), in firing order.

        Older checkpoints saved a flat list of ``(time, key)`` in firing order; it loads too.
        """
        self.heap, self.live, self.seq = [], set(), 0
        if isinstance(saved, list):
            for at, key in saved:
                if key_groups is None or key_group(key) in key_groups:
                    self.register(at, key)
            return
        chosen = (part for group, part in saved.items() if key_groups is None or group in key_groups)
        for at, _, key in sorted((t for part in chosen for t in part), key=itemgetter(0, 1)):
            self.register(at, key)


class KeyedService:
    """Keyed state (a backend) and event- and processing-time timers, checkpointed together.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> service = KeyedService()
    >>> service.cells("card-1")["n"] = 3; service.event_timers.register(10_000, "card-1")
    >>> service.end_batch()
    >>> files = SharedFiles(Path(tempfile.mkdtemp()), "op")
    >>> saved = service.snapshot(files)
    >>> again = KeyedService(); again.restore(saved, files)
    >>> again.cells("card-1"), list(again.event_timers.due(10_000))
    ({'n': 3}, [(10000, 'card-1')])
    """

    __slots__ = ("backend", "event_timers", "processing_timers")

    def __init__(self, backend: KeyedStateBackend | None = None) -> None:
        self.backend = backend if backend is not None else MemoryBackend()
        self.event_timers = KeyedTimers()
        self.processing_timers = KeyedTimers()

    def size(self) -> StateSize:
        """Keys held and timers pending (bytes are not measured for in-memory state).

        Examples
        --------
        >>> service = KeyedService(); service.cells("a")["n"] = 1; service.end_batch()
        >>> service.event_timers.register(5, "a")
        >>> service.size()
        StateSize(keys=1, bytes=None, timers=1)
        """
        keys, size = self.backend.estimate()
        return StateSize(keys, size, len(self.event_timers) + len(self.processing_timers))

    def cells(self, key: Any) -> dict[str, Any]:
        """The mutable state dict of ``key`` (see :meth:`KeyedStateBackend.cells`)."""
        return self.backend.cells(key)

    def end_batch(self) -> None:
        """A batch is done: let the backend drop empty keys and write back what it caches."""
        self.backend.end_batch()

    def __len__(self) -> int:
        return len(self.backend)

    def snapshot(self, files: SharedFiles) -> dict[str, Any]:
        """State and timers, per key group, for a checkpoint."""
        return {
            "state": self.backend.snapshot(files),
            "event": self.event_timers.snapshot(),
            "processing": self.processing_timers.snapshot(),
        }

    def restore(self, saved: dict[str, Any], files: SharedFiles) -> None:
        """Load what :meth:`snapshot` saved."""
        self.backend.restore(saved["state"], files)
        self.event_timers.restore(saved["event"])
        self.processing_timers.restore(saved["processing"])

    def close(self) -> None:
        """Release the backend's files and handles."""
        self.backend.close()
