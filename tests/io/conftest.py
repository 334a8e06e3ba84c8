"""Fixtures shared by the connector tests."""

from __future__ import annotations

import os

import pytest

from tests.services import unavailable

try:
    import psycopg
except ImportError:  # pragma: no cover - reported by the fixture
    psycopg = None  # type: ignore[assignment]

PG_DSN = os.environ.get("RHEON_TEST_POSTGRES", "postgresql://127.0.0.1/test")


@pytest.fixture(scope="session")
def dsn() -> str:
    """A reachable PostgreSQL (RHEON_TEST_POSTGRES, else the local one with a database 'test')."""
    if psycopg is None:
        unavailable("psycopg", "pip install -e '.[postgres]'")
    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        how = "start PostgreSQL on 127.0.0.1:5432 with a database 'test', or set RHEON_TEST_POSTGRES to a DSN"
        unavailable("PostgreSQL", f"{how} ({str(exc).strip()})")
    return PG_DSN
