"""Fused kernels for the per-weight mechanisms in eager mode.

A per-step mechanism is a chain of elementwise ops over every weight (the volume factor
alone hashes, converts and transforms each element: about 30 ops). Run op by op in eager
mode, that is 30 passes over memory per layer and step. ``@fused`` compiles such a function
once with ``torch.compile`` (dynamic shapes, so one kernel serves every layer size) into a
single pass per weight, and runs it compiled whenever the caller is eager.

* When the caller is already being compiled (``torch.compile`` of the bio model), the plain
  function is traced instead, so Inductor fuses it with the rest of the graph.
* ``BIOFX_FUSED=0`` in the environment, or :func:`set_enabled`\\ (False), runs the plain
  functions (first-call compile latency, a few seconds, is then avoided).
* If compiling fails (e.g. no C++ compiler on the machine), the plain function is used from
  then on, with one warning.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from typing import Callable

import torch

log = logging.getLogger("biofx")

_STATE = {"enabled": os.environ.get("BIOFX_FUSED", "1") != "0"}


def set_enabled(enabled: bool) -> None:
    """Turn fused kernels on or off for the process."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_enabled expects a bool, got {enabled!r}")
    _STATE["enabled"] = enabled


def enabled() -> bool:
    """Whether eager calls use the fused kernels."""
    return _STATE["enabled"]


def fused(fn: Callable) -> Callable:
    """Run ``fn`` as one compiled kernel when called eagerly (see the module docstring)."""
    compiled: list = []

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _STATE["enabled"] or torch.compiler.is_compiling() or compiled == [None]:
            return fn(*args, **kwargs)
        if not compiled:
            log.info("biofx: compiling the fused kernel %s (once per process)", fn.__qualname__)
            compiled.append(torch.compile(fn, dynamic=True, fullgraph=True))
        try:
            return compiled[0](*args, **kwargs)
        except Exception as err:  # a broken toolchain must not stop training
            compiled[0] = None
            warnings.warn(
                f"biofx could not compile {fn.__qualname__} ({type(err).__name__}: {err}); "
                "using the unfused version (slower). Set BIOFX_FUSED=0 to skip the attempt.",
                RuntimeWarning,
                stacklevel=2,
            )
            return fn(*args, **kwargs)

    wrapper.unfused = fn
    return wrapper
