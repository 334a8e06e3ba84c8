"""Complex event processing: find patterns of events per key, in event-time order.

Build a pattern with :func:`begin` and run it with ``stream.key_by(k).match(pattern)``; see
``docs/cep.md`` for every construct and the exact semantics (those of SQL's
``MATCH_RECOGNIZE``, with Flink CEP's contiguity and negations).

Examples
--------
>>> import rheon as rh
>>> from rheon import cep
>>> rows = [{"card": "c1", "amount": 0.5, "ts": 0}, {"card": "c1", "amount": 900.0, "ts": 60_000},
...         {"card": "c2", "amount": 0.5, "ts": 0}, {"card": "c2", "amount": 20.0, "ts": 1_000}]
>>> probe_then_big = cep.begin("small", rh.col("amount") < 1).next("big", rh.col("amount") > 500).within("10m")
>>> flow = rh.Flow("fraud"); out = rh.io.Collect()
>>> tx = flow.source(rh.io.Records(rows), time="ts", max_delay="2s")
>>> tx.key_by("card").match(probe_then_big).sink(out)
>>> flow.run(); [(r["card"], r["match_start"], r["match_end"], len(r["big"])) for r in out.rows]
[('c1', 0, 60000, 1)]
"""

from rheon.cep.pattern import Condition, Pattern, begin

__all__ = ["Condition", "Pattern", "begin"]
