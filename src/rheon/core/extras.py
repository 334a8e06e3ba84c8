"""Import the library behind an optional connector, or say which extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from rheon.core.errors import FlowError


def import_extra(module: str, *, user: str, package: str, extra: str) -> ModuleType:
    """Import ``module``; if it is missing, raise a :class:`FlowError` naming the pip extra.

    Examples
    --------
    >>> import_extra("json", user="rh.io.X", package="json", extra="x").__name__
    'json'
    >>> import_extra("no_such_module", user="rh.io.X", package="no-such", extra="x")
    Traceback (most recent call last):
    rheon.core.errors.FlowError: rh.io.X needs no-such. Try: pip install 'rheon[x]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        msg = f"{user} needs {package}. Try: pip install 'rheon[{extra}]'"
        raise FlowError(msg) from exc
