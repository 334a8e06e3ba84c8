"""The front doors: ``rheon`` and ``rheon.io`` export exactly the public API, documented."""

from __future__ import annotations

import inspect

import rheon as rh
import rheon.cep
import rheon.testing

EXPECTED_RHEON = [
    "Aggregate", "CheckpointError", "Flow", "FlowError", "KeyedStream", "MatchStream", "RecordError", "RheonError", "RunStats", "SinkError", "SourceError",
    "Stream", "WindowedStream", "__version__", "agg_fn", "approx_count_distinct", "approx_quantile", "arg_max", "arg_min", "col", "collect", "configure_logging", "count",
    "count_distinct", "first", "inspect", "io", "last", "lit",
    "max", "mean", "median", "min", "quantile", "session", "sliding", "std", "sum", "tumbling", "var",
]  # fmt: skip
EXPECTED_IO = [
    "BuildContext", "Callback", "Collect", "Console", "Csv", "FileSink", "Generator", "HttpIngest", "JsonLines",
    "Kafka", "KafkaSink", "Mqtt", "Parquet", "Postgres", "Records", "Redis", "Show", "Sink", "SinkLogic", "Source",
    "SourceLogic", "Webhook",
]  # fmt: skip


EXPECTED_CEP = ["Condition", "Pattern", "begin"]


def test_all_is_exact_and_sorted():
    assert rh.__all__ == EXPECTED_RHEON
    assert rh.io.__all__ == EXPECTED_IO
    assert rheon.cep.__all__ == EXPECTED_CEP
    assert sorted(rheon.testing.__all__) == rheon.testing.__all__


def test_every_public_name_has_a_docstring_with_an_example():
    names = [(rh, n) for n in rh.__all__ if n not in ("__version__", "io", "col", "lit")]
    names += [(rh.io, n) for n in rh.io.__all__]
    names += [(rheon.testing, n) for n in rheon.testing.__all__]
    names += [(rheon.cep, n) for n in rheon.cep.__all__ if n != "Condition"]  # a type alias
    missing = []
    for module, name in names:
        obj = getattr(module, name)
        doc = inspect.getdoc(obj) or ""
        if ">>>" not in doc:
            missing.append(f"{module.__name__}.{name}")
    assert missing == []
