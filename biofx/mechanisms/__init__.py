"""The mechanisms, one file each, as pure functions on tensors.

Each function documents its formula. They are used by the graph nodes (``biofx.ops``), by
the explicit model-level methods and by the optimizer-step hooks, so every path computes
the same numbers.
"""
