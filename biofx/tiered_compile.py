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
    "scopes": 0,  # kernel_scope()s entered
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


def _kernel_config():
    """The Dynamo settings the kernels compile and run under. Made once, reused.

    * Python floats (config values, polynomial coefficients) compile in as constants. Left
      symbolic, as ``dynamic=True`` would, each becomes a tensor input built on every call
      (about 20 ``torch.as_tensor`` per call of the volume kernel, doubling its fixed cost).
    * So a kernel is specialized to its constants: one compiled entry per combination of
      config values and mechanisms (and of ``None`` arguments) a process uses. Dynamo's
      default limit of 8 entries per function is raised to 64; at the limit, a kernel falls
      back to its unfused version for good, with a warning.
    """
    if "config" not in _STATE:
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        _STATE["config"] = torch._dynamo.config.patch(specialize_float=True, **{limit: 64})
    return _STATE["config"]


@contextlib.contextmanager
def kernel_scope():
    """The kernels' Dynamo settings (:func:`_kernel_config`) around any number of kernel calls.

    Entering them writes four config values and leaving restores them: about 18 µs, per call
    of a kernel when each call enters them itself. The optimizer-step hooks enter the scope
    once around all the layers of a step; a scope inside a scope only checks that (2.5 µs).
    """
    if _STATE["scopes"]:
        yield
        return
    with _kernel_config():
        _STATE["scopes"] += 1
        try:
            yield
        finally:
            _STATE["scopes"] -= 1


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
            _announce_compile(fn)
            state["compiled"] = torch.compile(fn, dynamic=True, fullgraph=True, options=_INDUCTOR_OPTIONS)
        try:
            with kernel_scope():
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


def _announce_compile(fn: Callable) -> None:
    """Say once per process, at warning level, that the step stalls while the kernels compile
    (a first kernel takes seconds on a CPU); later kernels only at info level."""
    if _STATE.setdefault("announced", False):
        log.info("biofx: compiling the fused kernel %s", fn.__qualname__)
        return
    _STATE["announced"] = True
    log.warning(
        "biofx: compiling the fused step kernels now (after %d eager calls of %s: each bio layer calls it "
        "once per optimizer step); this step takes seconds longer, once per process. BIOFX_FUSED_AFTER=N "
        "chooses when, BIOFX_FUSED=0 keeps the eager kernels",
        _STATE["after_calls"],
        fn.__qualname__,
    )


def flat(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as a kernel's flat input: a 1-D alias of a contiguous tensor (a copy of another),
    detached so that it is not a view. Dynamo guards the layout of a view's base, so a view would
    compile a kernel again for each rank of weight (a Linear's 2-D, a Conv2d's 4-D)."""
    return tensor.reshape(-1).detach()


@contextlib.contextmanager
def flat_views(*tensors: torch.Tensor):
    """Flat views of ``tensors`` for a kernel that writes into them: a fused kernel that
    updates its inputs in place stores its results once, where returning them would cost a
    second pass to copy them back. A non-contiguous tensor (e.g. a channels-last weight) is
    worked on as a contiguous copy and written back on exit."""
    flats = [flat(t) for t in tensors]
    yield flats
    for tensor, alias in zip(tensors, flats):
        if not tensor.is_contiguous():
            tensor.copy_(alias.view(tensor.shape))
