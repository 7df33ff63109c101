"""The installed biofx's version (no torch import: ``biofx --version`` answers at once)."""

from __future__ import annotations

import importlib.metadata


def version() -> str:
    """The installed biofx's version, from its package metadata (``biofx.__version__`` without it)."""
    try:
        return importlib.metadata.version("biofx")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from . import __version__

        return __version__
