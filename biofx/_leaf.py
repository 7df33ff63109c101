"""``graph_leaf``: how biofx's graph functions behave under tracers.

* Under ``torch.fx`` symbolic tracing (e.g. a pickled bio model being re-traced) the function
  stays one ``call_function`` node, also in a GraphModule's generated code, which
  ``torch.fx.wrap`` (patching the defining module's globals only) does not cover.
* Under Dynamo, every op the function records carries the bio tag
  ``node.meta["custom"]["biofx"] = {"mechanism": ...}`` (``torch.fx.traceback.annotate``),
  so the compiled graphs show which nodes are bio nodes.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch.fx as fx
import torch.fx.traceback as fx_traceback

_annotate = getattr(fx_traceback, "annotate", None)  # torch >= 2.9


def bio_annotation(mechanism: str):
    """A context under which traced ops get the bio tag of ``mechanism``."""
    if _annotate is None:
        return contextlib.nullcontext()
    return _annotate({"biofx": {"mechanism": mechanism}})


def graph_leaf(mechanism: str) -> Callable[[Callable], Callable]:
    """Decorator: a graph leaf for fx, tagged as ``mechanism`` for Dynamo."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            proxy = next((a for a in (*args, *kwargs.values()) if isinstance(a, fx.Proxy)), None)
            if proxy is not None:
                return proxy.tracer.create_proxy("call_function", wrapper, args, kwargs)
            with bio_annotation(mechanism):
                return fn(*args, **kwargs)

        return wrapper

    return decorate
