"""Joins: interval, window, temporal (stream x changelog) and lookup (stream x static table)."""

from rheon.operators.join.interval import IntervalJoin
from rheon.operators.join.lookup import LookupJoin
from rheon.operators.join.temporal import TemporalJoin
from rheon.operators.join.window import WindowJoin

__all__ = ["IntervalJoin", "LookupJoin", "TemporalJoin", "WindowJoin"]
