"""Public path ``biofx.kernels`` (documented; ``biofx.kernels.set_enabled``), kept as an alias:
it holds no kernels, the tiered-compile decorator lives in :mod:`biofx.tiered_compile`."""

from .tiered_compile import after_calls, enabled, fused, set_enabled

__all__ = ["fused", "set_enabled", "enabled", "after_calls"]
