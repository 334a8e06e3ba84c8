"""Runnable demo applications built on the public API (``rheon demo ...``).

Each app is a module with a function that builds its :class:`~rheon.Flow`, so it can be run
and tested without a user interface; the command line (``rheon.cli``) adds the display.

* :mod:`rheon.apps.monitoring`: sliding-window averages of host metrics and threshold alerts
  (``rheon demo``), on the synthetic hosts of :mod:`rheon.apps.hosts`.
"""
