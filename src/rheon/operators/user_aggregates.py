"""User-defined aggregations: ``rh.Aggregate`` subclasses (vectorized add / merge / finish) and
``rh.agg_fn`` (a Python function of a window's values, whose failures are dead letters)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import polars as pl
from typing_extensions import override

from rheon.core.deadletters import payload_of
from rheon.core.errors import FlowError
from rheon.operators.aggregations import Aggregation, _Values

__all__ = ["AggFn", "UserAggregate", "UserDefined"]


class UserAggregate(Protocol):
    """What :class:`rheon.Aggregate` provides (see there)."""

    inputs: tuple[str, ...]
    dtype: pl.DataType | None

    def add(self, col: Callable[[str], pl.Expr]) -> Mapping[str, pl.Expr]: ...
    def merge(self, col: Callable[[str], pl.Expr]) -> Mapping[str, pl.Expr]: ...
    def finish(self, col: Callable[[str], pl.Expr]) -> pl.Expr: ...


@dataclass(frozen=True, repr=False)
class UserDefined(Aggregation):
    """A user's :class:`rheon.Aggregate` run as the built-ins are: its ``add`` expressions over
    a group's rows give partial columns (named ``p_<name>``), ``merge`` combines partial rows,
    ``finish`` gives the result."""

    user: Any = None
    reads: tuple[tuple[str, str], ...] = ()
    """Input column -> the column read instead (``where=`` helpers)."""

    def _input(self, name: str) -> pl.Expr:
        if name not in self.user.inputs:
            msg = f"{self!r}: add() reads column {name!r}, which is not in its inputs {tuple(self.user.inputs)!r}"
            raise FlowError(msg)
        return pl.col(dict(self.reads).get(name, name))

    def _named(self, exprs: Mapping[str, pl.Expr], p: str, method: str) -> list[pl.Expr]:
        if not isinstance(exprs, Mapping) or not exprs or not all(isinstance(e, pl.Expr) for e in exprs.values()):
            msg = f"{self!r}: {method}() must return a dict of partial name -> Polars expression (got {exprs!r})"
            raise FlowError(msg)
        return [e.alias(f"{p}_{name}") for name, e in exprs.items()]

    @override
    def partials(self, p: str) -> list[pl.Expr]:
        return self._named(self.user.add(self._input), p, "add")

    @override
    def merges(self, p: str) -> list[pl.Expr]:
        return self._named(self.user.merge(lambda name: pl.col(f"{p}_{name}")), p, "merge")

    @override
    def final(self, p: str) -> pl.Expr:
        return self.user.finish(lambda name: pl.col(f"{p}_{name}"))  # type: ignore[no-any-return]

    @override
    def inputs(self) -> list[str]:
        names = list(dict.fromkeys(self.user.inputs))
        if self.where is not None:
            names += [c for c in self.where.meta.root_names() if c not in names]
        return names

    @override
    def masked(self, helper: str) -> tuple[list[pl.Expr], Aggregation]:
        """For ``where=``: each input column read through a helper that is null where
        ``where`` does not hold."""
        assert self.where is not None
        names = list(dict.fromkeys(self.user.inputs))
        exprs = [pl.when(self.where).then(pl.col(c)).alias(f"{helper}{i}") for i, c in enumerate(names)]
        reads = tuple((c, f"{helper}{i}") for i, c in enumerate(names))
        return exprs, replace(self, reads=reads, where=None)

    @override
    def result_dtype(self, dtype: pl.DataType | None) -> pl.DataType | None:
        return self.user.dtype  # type: ignore[no-any-return]

    @override
    def check(self, where: str, field_name: str, schema: pl.Schema | None) -> None:
        super().check(where, field_name, schema)
        added = set(self.user.add(self._input))
        merged = set(self.user.merge(lambda name: pl.col(name)))
        if added != merged:
            msg = (
                f"{where}: aggregation '{field_name}' = {self!r}: merge() must give the partials add() gives "
                f"(add: {sorted(added)}, merge: {sorted(merged)})"
            )
            raise FlowError(msg)
        if schema is None:
            return
        for name in self.user.inputs:
            self._require(where, field_name, schema, name, "unknown input column {name}")
        try:  # the expressions run once on no rows: type errors show now, not mid-flow
            partial = pl.DataFrame(schema=schema).group_by(pl.lit(0).alias("__g")).agg(self.partials("p"))
            partial.group_by("__g").agg(self.merges("p")).select(self.final("p"))
        except pl.exceptions.PolarsError as exc:
            msg = f"{where}: aggregation '{field_name}' = {self!r} cannot run on this stream: {exc}"
            raise FlowError(msg) from None

    def __repr__(self) -> str:
        text = repr(self.user)
        return f"{text[:-1]}, where={self.where})" if self.where is not None and text.endswith(")") else text


@dataclass(frozen=True, repr=False)
class AggFn(_Values):
    """A Python function over the list of a window's non-null values (``rh.agg_fn``): each pane
    keeps its values, and the function runs once per window result (not for a window with no
    value: null). A call that raises gives a null result and a dead letter."""

    fn: Callable[[list[Any]], Any] | None = None
    dtype: pl.DataType | None = None
    errors: list[tuple[str, str]] = field(default_factory=list, compare=False)

    fn_name = "agg_fn"

    @override
    def finish(self, merged: pl.DataFrame, p: str) -> pl.DataFrame:
        assert self.fn is not None
        fn = self.fn
        results: list[Any] = []
        for values in merged.get_column(p).to_list():
            if not values:  # no value: null, as for the built-ins
                results.append(None)
                continue
            try:
                results.append(fn(values))
            except Exception as exc:  # the user's function: its failure is a dead letter, not a crash
                name = getattr(fn, "__name__", repr(fn))
                reason = f"rh.agg_fn({name}, {self.column!r}) raised {type(exc).__name__}: {exc}"
                self.errors.append((reason, payload_of({"values": values})))
                results.append(None)
        try:
            column = pl.Series(p + "_value", results, dtype=self.dtype, strict=True)
        except (TypeError, OverflowError, ValueError, pl.exceptions.PolarsError):
            numbers = all(isinstance(r, int | float) and not isinstance(r, bool) for r in results if r is not None)
            if self.dtype is not None or not numbers:
                kinds = ", ".join(sorted({type(r).__name__ for r in results if r is not None}))
                wanted = f"type {self.dtype}" if self.dtype is not None else "one column type"
                msg = (
                    f"rh.agg_fn({getattr(fn, '__name__', repr(fn))}, {self.column!r}): its results ({kinds}) do not "
                    f"fit {wanted}; give dtype=, e.g. rh.agg_fn(fn, {self.column!r}, dtype=pl.Float64)"
                )
                raise FlowError(msg) from None
            column = pl.Series(p + "_value", results, dtype=pl.Float64)  # integers and floats: floats
        return merged.with_columns(column)

    @override
    def final(self, p: str) -> pl.Expr:
        return pl.col(p + "_value")

    @override
    def take_errors(self) -> list[tuple[str, str]]:
        errors = list(self.errors)
        self.errors.clear()
        return errors

    @override
    def result_dtype(self, dtype: pl.DataType | None) -> pl.DataType | None:
        return self.dtype

    @override
    def _args(self) -> list[str]:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return [name, *super()._args(), *([f"dtype={self.dtype}"] if self.dtype is not None else [])]
