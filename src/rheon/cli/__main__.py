"""``python -m rheon.cli``: the same as the ``rheon`` command."""

from rheon.cli.main import main

if __name__ == "__main__":
    main()
