"""A tiered-compile decorator, :func:`fused`: the per-weight mechanisms as one kernel in eager mode.

A per-step mechanism is a chain of elementwise ops over every weight (the volume factor
alone hashes, converts and transforms each element: about 30 ops). Run op by op in eager
mode, that is 30 passes over memory per layer and step. ``@fused`` compiles such a function
with ``torch.compile`` (dynamic shapes, so one kernel serves every layer size) into a single
pass per weight.

Compilation is tiered, like a JIT: a kernel runs op by op for its first ``after_calls`` calls
(default 200) and is compiled once it is hot, so short runs and tests never wait for the
compiler and long runs pay a few seconds once.

* When the caller is already being compiled (``torch.compile`` of the bio model), the plain
  function is traced instead, so Inductor fuses it with the rest of the graph.
* ``BIOFX_FUSED=0`` in the environment, or :func:`set_enabled`\\ (False), keeps the plain
  functions; ``BIOFX_FUSED_AFTER=N`` (or ``set_enabled(True, after_calls=N)``) sets the tier.
* If compiling fails (e.g. no C++ compiler on the machine), the plain function is used from
  then on, with one warning.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from typing import Callable, Optional

import torch

log = logging.getLogger("biofx")

_STATE = {
    "enabled": os.environ.get("BIOFX_FUSED", "1") != "0",
    "after_calls": int(os.environ.get("BIOFX_FUSED_AFTER", "200")),
}


def set_enabled(enabled: bool, after_calls: Optional[int] = None) -> None:
    """Turn fused kernels on or off; ``after_calls``: eager calls before a kernel is compiled."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_enabled expects a bool, got {enabled!r}")
    if after_calls is not None:
        if isinstance(after_calls, bool) or not isinstance(after_calls, int) or after_calls < 0:
            raise ValueError(f"after_calls must be an int >= 0, got {after_calls!r}")
        _STATE["after_calls"] = after_calls
    _STATE["enabled"] = enabled


def enabled() -> bool:
    """Whether eager calls use the fused kernels (once hot)."""
    return _STATE["enabled"]


def after_calls() -> int:
    """Eager calls a kernel makes before it is compiled."""
    return _STATE["after_calls"]


#: Inductor fuses two loops only if they share at least ``score_fusion_memory_threshold`` bytes
#: of reads (10 by default). A kernel's random draw shares exactly one 0-d int64 read, its seed
#: (8 bytes), between the loops that store a hash's two uniforms; below the threshold they were
#: two loops that each hashed (``rng.uniform`` 4.75 ms against 2.64 ms for 668,672 draws).
_INDUCTOR_OPTIONS = {"score_fusion_memory_threshold": 8}


def _specialized_floats():
    """A context in which Python floats (config values, polynomial coefficients) compile in as
    constants. Left symbolic, as ``dynamic=True`` would, each becomes a tensor input built on
    every call (about 20 ``torch.as_tensor`` per call of the volume kernel, doubling its fixed
    cost). A changed value recompiles; the values are config constants. Made once, reused."""
    if "specialize_floats" not in _STATE:
        _STATE["specialize_floats"] = torch._dynamo.config.patch(specialize_float=True)
    return _STATE["specialize_floats"]


def fused(fn: Callable) -> Callable:
    """Run ``fn`` as one compiled kernel once it is hot (see the module docstring)."""
    state = {"calls": 0, "compiled": None, "failed": False}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _STATE["enabled"] or state["failed"] or torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if state["compiled"] is None:
            state["calls"] += 1
            if state["calls"] <= _STATE["after_calls"]:
                return fn(*args, **kwargs)
            log.info("biofx: compiling the fused kernel %s (once per process)", fn.__qualname__)
            state["compiled"] = torch.compile(fn, dynamic=True, fullgraph=True, options=_INDUCTOR_OPTIONS)
        try:
            with _specialized_floats():
                return state["compiled"](*args, **kwargs)
        except Exception as err:  # a broken toolchain must not stop training
            state["failed"] = True
            warnings.warn(
                f"biofx could not compile {fn.__qualname__} ({type(err).__name__}: {err}); "
                "using the unfused version (slower). Set BIOFX_FUSED=0 to skip the attempt.",
                RuntimeWarning,
                stacklevel=2,
            )
            return fn(*args, **kwargs)

    wrapper.unfused = fn
    return wrapper


@contextlib.contextmanager
def flat_views(*tensors: torch.Tensor):
    """Flat views of ``tensors`` for a kernel that writes into them: a fused kernel that
    updates its inputs in place stores its results once, where returning them would cost a
    second pass to copy them back. A non-contiguous tensor (e.g. a channels-last weight) is
    worked on as a contiguous copy and written back on exit."""
    flats = [t.view(-1) if t.is_contiguous() else t.contiguous().view(-1) for t in tensors]
    yield flats
    for tensor, flat in zip(tensors, flats):
        if not tensor.is_contiguous():
            tensor.copy_(flat.view(tensor.shape))
