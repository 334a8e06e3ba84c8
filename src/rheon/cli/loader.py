"""Load a flow file for ``rheon run``: execute it, find its :class:`~rheon.Flow` objects, pick one."""

from __future__ import annotations

import runpy
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import click

from rheon.api.flow import Flow

__all__ = ["RUN_NAME", "find_flows", "load_target", "pick_flow"]

RUN_NAME = "__rheon_run__"
"""``__name__`` of a flow file run by ``rheon run``, so its ``if __name__ == "__main__":`` block is skipped."""


@contextmanager
def script_dir_on_path(path: Path) -> Iterator[None]:
    """Put the file's directory first on ``sys.path`` (as ``python file.py`` does), then restore it."""
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with suppress(ValueError):  # the script removed it itself
            sys.path.remove(folder)


def find_flows(namespace: Mapping[str, Any]) -> dict[str, Flow]:
    """The flows among a module's globals, by variable name (each flow once, under its first name).

    Examples
    --------
    >>> import rheon as rh
    >>> payments = rh.Flow("payments")
    >>> find_flows({"payments": payments, "same": payments, "n": 3, "_hidden": rh.Flow("h")})
    {'payments': Flow('payments', 0 operators)}
    """
    found: dict[str, Flow] = {}
    seen: set[int] = set()
    for name, value in namespace.items():
        if isinstance(value, Flow) and not name.startswith("_") and id(value) not in seen:
            seen.add(id(value))
            found[name] = value
    return found


def _describe(flows: Mapping[str, Flow]) -> str:
    return ", ".join(name if flow.name == name else f"{name} (Flow {flow.name!r})" for name, flow in flows.items())


def pick_flow(flows: Mapping[str, Flow], wanted: str | None, where: str) -> Flow:
    """Choose the flow to run: the only one, or the one named ``wanted`` (variable or flow name).

    Raises :class:`click.ClickException` when there is none, :class:`click.UsageError` when the
    choice is ambiguous or ``wanted`` names no flow.

    Examples
    --------
    >>> import rheon as rh
    >>> flows = {"a": rh.Flow("a"), "b": rh.Flow("bee")}
    >>> pick_flow(flows, "bee", "f.py")
    Flow('bee', 0 operators)
    >>> pick_flow(flows, None, "f.py")
    Traceback (most recent call last):
    ...
    click.exceptions.UsageError: f.py defines 2 flows: a, b (Flow 'bee'). Choose one with --flow NAME.
    """
    if not flows:
        msg = (
            f"no rheon.Flow found in {where}, and no main() to call. Define one at module level "
            '(flow = rh.Flow("name")), a main() that builds and runs it, or name the function '
            "that does with --function NAME."
        )
        raise click.ClickException(msg)
    if wanted is None:
        if len(flows) == 1:
            return next(iter(flows.values()))
        msg = f"{where} defines {len(flows)} flows: {_describe(flows)}. Choose one with --flow NAME."
        raise click.UsageError(msg)
    if wanted in flows:
        return flows[wanted]
    by_flow_name = [flow for flow in flows.values() if flow.name == wanted]
    if len(by_flow_name) == 1:
        return by_flow_name[0]
    msg = f"--flow {wanted!r}: {where} has no such flow (flows: {_describe(flows)})."
    raise click.UsageError(msg)


def load_target(path: Path, flow_name: str | None = None, function: str | None = None) -> Flow | Callable[[], Any]:
    """Execute the flow file ``path`` (as ``__rheon_run__``) and return what to run: a flow it
    defines at module level, or a function of it (``function``, else ``main``) to call.

    A file that builds its flow inside a function (``def main(): flow = rh.Flow(...); ...;
    flow.run()``) is run by calling that function; ``--function build`` calls ``build()``, which
    may return the flow instead of running it.

    Examples
    --------
    >>> import tempfile, textwrap
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     file = Path(tmp) / "flow.py"
    ...     _ = file.write_text(textwrap.dedent('''
    ...         import rheon as rh
    ...         def main():
    ...             flow = rh.Flow("inside")
    ...             flow.source(rh.io.Records([{"x": 1}])).sink(rh.io.Collect())
    ...             flow.run()
    ...     '''))
    ...     load_target(file).__name__
    'main'
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     file = Path(tmp) / "flow.py"
    ...     _ = file.write_text(textwrap.dedent('''
    ...         import rheon as rh
    ...         flow = rh.Flow("hello")
    ...         flow.source(rh.io.Records([{"x": 1}])).sink(rh.io.Collect())
    ...         if __name__ == "__main__":
    ...             raise SystemExit("not run by rheon run")
    ...     '''))
    ...     load_target(file)
    Flow('hello', 2 operators)
    """
    with script_dir_on_path(path):
        namespace = runpy.run_path(str(path), run_name=RUN_NAME)
    flows = find_flows(namespace)
    if function is not None:
        if flow_name is not None:
            msg = "give --flow or --function, not both"
            raise click.UsageError(msg)
        target = namespace.get(function)
        if not callable(target):
            names = sorted(
                n for n, v in namespace.items() if callable(v) and getattr(v, "__module__", None) == RUN_NAME
            )
            msg = (
                f"--function {function!r}: {path.name} has no such function (functions: {', '.join(names) or 'none'})."
            )
            raise click.UsageError(msg)
        return target  # type: ignore[no-any-return]
    if flows or flow_name is not None:
        return pick_flow(flows, flow_name, path.name)
    main = namespace.get("main")
    if callable(main):
        return main  # type: ignore[no-any-return]
    return pick_flow(flows, None, path.name)  # explains that there is nothing to run
