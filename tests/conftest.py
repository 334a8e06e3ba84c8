"""Shared fixtures: the execution axis (batch sizes) and real-service helpers."""

from __future__ import annotations

import pytest


@pytest.fixture(params=[1, 7, 1000], ids=lambda b: f"batch{b}")
def batch_size(request: pytest.FixtureRequest) -> int:
    """Rerun a test with tiny, odd and large batches: results must not depend on batching."""
    return int(request.param)
