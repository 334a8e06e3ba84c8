"""Operators: stateless transforms, window aggregation, reduce, union, sinks.

An operator takes a :class:`~rheon.core.batch.Batch` on an input port and returns outputs as
``(tag, batch)`` pairs; the tag is ``"main"``, ``"late"`` (events that missed their window) or
``"dead"`` (records that failed, in dead-letter form).
"""
