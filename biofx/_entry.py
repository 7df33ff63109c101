"""The ``biofx`` command's entry point (and ``python -m biofx``): ``--version`` answers
without importing torch, and a core install without NumPy gets no NumPy warning from torch."""

from __future__ import annotations

import sys
import warnings
from typing import Optional

from ._version import version


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line (:func:`biofx.cli.main`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--version"]:  # as argparse would answer it, without torch
        print(f"biofx {version()}")
        return 0
    with warnings.catch_warnings():  # torch without NumPy warns at import; the CLI needs no NumPy
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
        from .cli import main as cli_main
    return cli_main(argv)
