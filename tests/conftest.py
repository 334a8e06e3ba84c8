"""Shared fixtures: the execution axis (batch sizes) and real-service helpers."""

from __future__ import annotations

import pytest


@pytest.fixture(params=[1, 7, 1000], ids=lambda b: f"batch{b}")
def batch_size(request: pytest.FixtureRequest) -> int:
    """Rerun a test with tiny, odd and large batches: results must not depend on batching."""
    return int(request.param)


@pytest.fixture(params=["arrays", "frame"])
def pane_state(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Tumbling and sliding windows holding their state as arrays where they can, or always
    as a frame (both forms must give the same rows)."""
    from rheon.operators.window.panes import PaneWindowOperator

    monkeypatch.setattr(PaneWindowOperator, "ARRAYS", request.param == "arrays")
    return str(request.param)
