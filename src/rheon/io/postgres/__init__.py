"""PostgreSQL sink (``pip install 'rheon[postgres]'``, psycopg 3)."""

from rheon.io.postgres.encoding import sql_type
from rheon.io.postgres.sink import Postgres, _PostgresLogic

__all__ = ["Postgres", "_PostgresLogic", "sql_type"]
