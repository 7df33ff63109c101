"""``python -m biofx``: the :mod:`biofx.cli` command line."""

from ._entry import main

if __name__ == "__main__":
    raise SystemExit(main())
