"""``python -m biofx``: the :mod:`biofx.cli` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
