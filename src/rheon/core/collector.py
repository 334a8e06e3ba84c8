"""Pausing Python's cyclic garbage collector around work that makes many short-lived objects.

Turning a batch into a million dicts, or reading fifty thousand Kafka messages, makes the
collector run thousands of times and scan every live object: about 40 % of a Python ``map``'s
time and half of ``consume``'s (measured in ``benchmarks/``). Such objects (dicts of scalars,
message objects) hold no cycles; anything left in a cycle is collected once the block is done.
Reference counting goes on as usual.

Examples
--------
>>> import gc
>>> with no_gc():
...     paused = not gc.isenabled()
>>> paused, gc.isenabled()
(True, True)
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["no_gc"]


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector in the block, if it is on (if someone else turned it
    off, it stays off).

    >>> with no_gc():
    ...     pass
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
