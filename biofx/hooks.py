"""Public path ``biofx.hooks`` (documented: :func:`install`), kept as an alias: the
optimizer-step hooks live with the live-layer registry in :mod:`biofx.runtime`."""

from .runtime import install

__all__ = ["install"]
