"""The ``rheon`` command line: ``rheon run flow.py`` and ``rheon demo``.

The entry point is :func:`rheon.cli.main.main` (the ``rheon`` console script); ``python -m
rheon.cli`` does the same.
"""
