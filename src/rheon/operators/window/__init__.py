"""Event-time window aggregation: tumbling and sliding (pane-based) and session windows."""

from rheon.operators.window.common import WindowOperator
from rheon.operators.window.panes import PaneWindowOperator
from rheon.operators.window.session import SessionWindowOperator

__all__ = ["PaneWindowOperator", "SessionWindowOperator", "WindowOperator"]
