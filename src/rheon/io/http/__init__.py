"""HTTP ingest source (``pip install 'rheon[http]'``, Starlette and uvicorn)."""

from rheon.io.http.ingest import HttpIngest, _HttpIngestLogic
from rheon.io.http.parse import BadRequest, parse_events

__all__ = ["BadRequest", "HttpIngest", "_HttpIngestLogic", "parse_events"]
