"""The pattern API: ``cep.begin(...).next(...).followed_by(...).within(...)``.

A :class:`Pattern` is a small immutable value: each method returns a new pattern, so a pattern
can be shared, extended in two ways, printed and compared. Conditions are Polars expressions on
one event (evaluated vectorized on whole batches) or Python functions ``fn(event, match)`` that
see the events matched so far. ``docs/cep.md`` defines what a pattern matches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Literal

import polars as pl

from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError, columns_hint, did_you_mean

__all__ = ["Condition", "Pattern", "Step", "begin"]

Condition = pl.Expr | Callable[[dict[str, Any], dict[str, list[dict[str, Any]]]], bool] | None
"""A step's condition: a Polars expression on the event, a Python ``fn(event, match) -> bool``,
or ``None`` (any event)."""

Contiguity = Literal["strict", "relaxed", "any"]
Kind = Literal["positive", "not_next", "not_followed_by"]

_HOW = {"strict": "next", "relaxed": "followed_by", "any": "followed_by_any"}


@dataclass(frozen=True, eq=False)
class Step:
    """One step of a pattern (what the user wrote; :mod:`rheon.cep.nfa` runs it)."""

    name: str
    condition: Condition
    kind: Kind = "positive"
    contiguity: Contiguity = "strict"
    min: int = 1
    max: int | None = 1
    greedy: bool = True
    quantified: bool = False

    def describe(self) -> str:
        """The step as the methods that made it: ``followed_by('pw', <expr>).times(2)``."""
        method = {"not_next": "not_next", "not_followed_by": "not_followed_by"}.get(self.kind, _HOW[self.contiguity])
        text = f"{method}({self.name!r}, {_describe_condition(self.condition)})"
        if self.kind == "positive":
            if (self.min, self.max) != (1, 1) or self.quantified:
                text += f".times({self.min}, {'inf' if self.max is None else self.max})"
            if not self.greedy:
                text += ".reluctant()"
        return text


def _describe_condition(condition: Condition) -> str:
    if condition is None:
        return "any"
    if isinstance(condition, pl.Expr):
        return str(condition)
    return getattr(condition, "__qualname__", repr(condition))


class Pattern:
    """A sequence of named steps to find in each key's events, in event-time order.

    Build one with :func:`begin`, then chain ``next`` / ``followed_by`` / ``followed_by_any``
    (positive steps, by contiguity), ``not_next`` / ``not_followed_by`` (negations), quantifiers
    on the last step (``times``, ``one_or_more``, ``times_or_more``, ``optional``,
    ``reluctant``) and ``within``. Run it with ``stream.key_by(k).match(pattern)``.

    Examples
    --------
    >>> import rheon as rh
    >>> from rheon import cep
    >>> p = cep.begin("small", rh.col("amount") < 1).next("big", rh.col("amount") > 500).within("10m")
    >>> p
    <Pattern begin('small', [(col("amount")) < (dyn int: 1)]).next('big', [(col("amount")) > (dyn int: 500)]).within(600000ms)>
    >>> p.names
    ['small', 'big']
    """

    __slots__ = ("steps", "within_ms")

    def __init__(self, steps: tuple[Step, ...], within_ms: int | None = None) -> None:
        self.steps = steps
        self.within_ms = within_ms

    def __repr__(self) -> str:
        parts = [f"begin{self.steps[0].describe()[self.steps[0].describe().index('(') :]}"]
        parts += [s.describe() for s in self.steps[1:]]
        text = ".".join(parts)
        if self.within_ms is not None:
            text += f".within({self.within_ms}ms)"
        return f"<Pattern {text}>"

    @property
    def names(self) -> list[str]:
        """The names of the positive steps (the output's step columns), in order."""
        return [s.name for s in self.steps if s.kind == "positive"]

    # -- steps -------------------------------------------------------------------------------

    def _add(self, step: Step) -> Pattern:
        taken = {s.name for s in self.steps}
        if step.name in taken:
            msg = f"pattern {self._short()}: the step name {step.name!r} is used twice; give each step its own name"
            raise FlowError(msg)
        return Pattern((*self.steps, step), self.within_ms)

    def _short(self) -> str:
        return "->".join(s.name for s in self.steps)

    def next(self, name: str, condition: Condition = None) -> Pattern:
        """Add a step whose first event must be the very next event of the key (strict contiguity).

        Examples
        --------
        >>> import rheon as rh
        >>> from rheon import cep
        >>> cep.begin("a", rh.col("x") == 1).next("b", rh.col("x") == 2).names
        ['a', 'b']
        """
        return self._add(_step(name, condition, "positive", "strict", self._short()))

    def followed_by(self, name: str, condition: Condition = None) -> Pattern:
        """Add a step that starts at the first later event satisfying it (relaxed contiguity:
        events that do not satisfy it are skipped).

        Examples
        --------
        >>> import rheon as rh
        >>> from rheon import cep
        >>> cep.begin("login", rh.col("type") == "login").followed_by("pw", rh.col("type") == "pw").names
        ['login', 'pw']
        """
        return self._add(_step(name, condition, "positive", "relaxed", self._short()))

    def followed_by_any(self, name: str, condition: Condition = None) -> Pattern:
        """Add a step that may start at any later event satisfying it (non-deterministic relaxed
        contiguity: with ``after_match="no_skip"`` every combination is a match).

        Examples
        --------
        >>> import rheon as rh
        >>> from rheon import cep
        >>> cep.begin("a", rh.col("x") == 1).followed_by_any("b", rh.col("x") == 2).names
        ['a', 'b']
        """
        return self._add(_step(name, condition, "positive", "any", self._short()))

    def not_next(self, name: str, condition: Condition) -> Pattern:
        """Require that the event right after the events matched so far does not satisfy
        ``condition``.

        Examples
        --------
        >>> import rheon as rh
        >>> from rheon import cep
        >>> cep.begin("a", rh.col("x") == 1).not_next("no_b", rh.col("x") == 2).names
        ['a']
        """
        return self._add(_step(name, condition, "not_next", "strict", self._short(), negation=True))

    def not_followed_by(self, name: str, condition: Condition) -> Pattern:
        """Require that no event between the previous step and the next one satisfies
        ``condition`` (at the end of a pattern: none before ``within`` runs out).

        Examples
        --------
        >>> import rheon as rh
        >>> from rheon import cep
        >>> order_unpaid = (cep.begin("order", rh.col("type") == "order")
        ...                    .not_followed_by("payment", rh.col("type") == "payment").within("15m"))
        >>> order_unpaid.names
        ['order']
        """
        return self._add(_step(name, condition, "not_followed_by", "relaxed", self._short(), negation=True))

    # -- quantifiers ---------------------------------------------------------------------------

    def _quantify(self, method: str, lo: int, hi: int | None) -> Pattern:
        last = self.steps[-1]
        where = f"pattern {self._short()}, step {last.name!r}"
        if last.kind != "positive":
            msg = f"{where}: {method} cannot apply to a negation ({last.kind}); quantify a positive step"
            raise FlowError(msg)
        if last.quantified:
            msg = f"{where}: {method} on a step that already has a quantifier ({last.describe()})"
            raise FlowError(msg)
        return Pattern((*self.steps[:-1], replace(last, min=lo, max=hi, quantified=True)), self.within_ms)

    def times(self, n: int, m: int | None = None) -> Pattern:
        """The last step takes exactly ``n`` events, or ``n`` to ``m`` with ``times(n, m)``
        (consecutive events of the key; greedy: as many as it can).

        Examples
        --------
        >>> import rheon as rh
        >>> from rheon import cep
        >>> cep.begin("hot", rh.col("cpu") > 90).times(3)
        <Pattern begin('hot', [(col("cpu")) > (dyn int: 90)]).times(3, 3)>
        """
        where = f"pattern {self._short()}, step {self.steps[-1].name!r}"
        if not _is_count(n) or n < (0 if m is not None else 1):
            msg = f"{where}: times({n!r}) needs a count of at least 1"
            raise FlowError(msg)
        if m is not None and (not _is_count(m) or m < max(n, 1)):
            msg = f"{where}: times({n!r}, {m!r}) needs 0 <= n <= m and m >= 1"
            raise FlowError(msg)
        return self._quantify("times()", n, n if m is None else m)

    def one_or_more(self) -> Pattern:
        """The last step takes one or more consecutive events (greedy).

        Examples
        --------
        >>> import rheon as rh
        >>> from rheon import cep
        >>> cep.begin("fail", ~rh.col("ok")).one_or_more().steps[0].max is None
        True
        """
        return self._quantify("one_or_more()", 1, None)

    def times_or_more(self, n: int) -> Pattern:
        """The last step takes ``n`` or more consecutive events (greedy).

        Examples
        --------
        >>> import rheon as rh
        >>> from rheon import cep
        >>> cep.begin("fail", ~rh.col("ok")).times_or_more(3).steps[0].min
        3
        """
        if not _is_count(n) or n < 1:
            msg = f"pattern {self._short()}, step {self.steps[-1].name!r}: times_or_more({n!r}) needs a count >= 1"
            raise FlowError(msg)
        return self._quantify("times_or_more()", n, None)

    def optional(self) -> Pattern:
        """The last step may also take no event (it keeps its other bounds; greedy: present if
        it can be).

        Examples
        --------
        >>> import rheon as rh
        >>> from rheon import cep
        >>> cep.begin("a", rh.col("x") == 1).next("b", rh.col("x") == 2).optional().steps[1].min
        0
        """
        last = self.steps[-1]
        if last.kind != "positive":
            msg = f"pattern {self._short()}, step {last.name!r}: optional() cannot apply to a negation"
            raise FlowError(msg)
        return Pattern((*self.steps[:-1], replace(last, min=0)), self.within_ms)

    def reluctant(self) -> Pattern:
        """Make the last step's quantifier (or ``optional``) take as few events as it can.

        Examples
        --------
        >>> import rheon as rh
        >>> from rheon import cep
        >>> cep.begin("a", rh.col("x") == 1).one_or_more().reluctant().steps[0].greedy
        False
        """
        last = self.steps[-1]
        if last.kind != "positive":
            msg = f"pattern {self._short()}, step {last.name!r}: reluctant() cannot apply to a negation"
            raise FlowError(msg)
        return Pattern((*self.steps[:-1], replace(last, greedy=False)), self.within_ms)

    def within(self, duration: Duration) -> Pattern:
        """A match's last event is less than ``duration`` after its first; partial matches older
        than that are dropped (and reported on ``.timed_out()``).

        Examples
        --------
        >>> import rheon as rh
        >>> from rheon import cep
        >>> cep.begin("a", rh.col("x") == 1).within("10m").within_ms
        600000
        """
        where = f"pattern {self._short()}: within"
        ms = to_ms(duration, what=where)
        if ms <= 0:
            shown = duration if not isinstance(duration, timedelta) else str(duration)
            msg = f"{where} must be positive (got {shown!r})"
            raise FlowError(msg)
        return Pattern(self.steps, ms)

    # -- checks when the pattern meets a stream ----------------------------------------------

    def check(self, where: str, schema: pl.Schema | None, reserved: Mapping[str, str]) -> None:
        """Refuse what cannot run on a stream with ``schema`` (``None``: unknown)."""
        names = self.names
        for step in self.steps:
            if step.name in reserved:
                msg = f"{where}, step {step.name!r}: the name clashes with the {reserved[step.name]}; pick another"
                raise FlowError(msg)
            if isinstance(step.condition, pl.Expr) and schema is not None:
                for column in step.condition.meta.root_names():
                    if column not in schema:
                        cols = schema.names()
                        msg = (
                            f"{where}, step {step.name!r}: unknown column {column!r} in the condition "
                            f"{columns_hint(cols)}.{did_you_mean(column, cols)}"
                        )
                        raise FlowError(msg)
        if all(s.min == 0 for s in self.steps if s.kind == "positive"):
            msg = f"{where}: every step of the pattern is optional, so it could match no event; make one required"
            raise FlowError(msg)
        if self.steps[-1].kind == "not_followed_by" and self.within_ms is None:
            msg = (
                f"{where}, step {self.steps[-1].name!r}: a pattern cannot end with not_followed_by unless it has "
                "within(...): without a time limit it would never be known that the event did not come. "
                'Add .within("15m") (or the limit you mean).'
            )
            raise FlowError(msg)
        assert names


def _is_count(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


def _step(
    name: str, condition: Condition, kind: Kind, contiguity: Contiguity, after: str, negation: bool = False
) -> Step:
    where = f"pattern {after + '->' if after else ''}{name!r}" if isinstance(name, str) else "pattern"
    if not isinstance(name, str) or not name.isidentifier():
        msg = f"{where}: a step name must be a plain identifier, e.g. 'small' (got {name!r})"
        raise FlowError(msg)
    if condition is None and negation:
        msg = f"{where}: a negation needs a condition (which events must not come)"
        raise FlowError(msg)
    if not (condition is None or isinstance(condition, pl.Expr) or callable(condition)):
        msg = (
            f"{where}, step {name!r}: the condition must be a Polars expression such as rh.col('amount') > 500, "
            f"or a function fn(event, match) -> bool (got {condition!r})"
        )
        raise FlowError(msg)
    return Step(name, condition, kind, contiguity)


def begin(name: str, condition: Condition = None) -> Pattern:
    """Start a pattern with its first step: ``name`` and a condition (``None``: any event).

    Examples
    --------
    >>> import rheon as rh
    >>> from rheon import cep
    >>> brute_force = (cep.begin("fail", ~rh.col("ok")).times_or_more(3)
    ...                   .next("success", rh.col("ok")).within("5m"))
    >>> brute_force.names, brute_force.within_ms
    (['fail', 'success'], 300000)
    """
    return Pattern((_step(name, condition, "positive", "strict", ""),))
