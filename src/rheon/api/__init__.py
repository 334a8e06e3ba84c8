"""API layer: Flow, Stream, KeyedStream, WindowedStream and the aggregation functions."""
