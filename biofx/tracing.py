"""Tracing: the biofx tracer and what to do when a model does not trace.

:class:`BioTracer` is ``torch.fx``'s symbolic tracer with every convertible layer kind (and
biofx's own modules) kept as a leaf, so each layer call is one ``call_module`` node.
"""

from __future__ import annotations

import traceback
from typing import Any, Iterable, Optional

import torch.fx as fx
import torch.nn as nn

from .layers import kind_of
from .state import BioSynapses

__all__ = ["BioTracer", "trace", "TraceError"]


class TraceError(RuntimeError):
    """A model (or submodule) could not be traced; the message names where and how to fix it."""


class BioTracer(fx.Tracer):
    """Symbolic tracer whose leaves are torch.nn modules, layer kinds and user leaf types."""

    def __init__(self, leaf_modules: Iterable[type] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extra_leaves = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """Whether ``m`` stays one ``call_module`` node instead of being traced through.

        Leaves, in this order: a module of a registered layer kind (``nn.Linear``,
        ``nn.Conv1d/2d/3d`` and those added with :func:`biofx.register_layer_kind`), so the
        passes find each layer call as one node; biofx's own :class:`BioSynapses` state
        modules; an instance of a ``leaf_modules`` type given to :func:`biofx.transform`; and
        whatever ``torch.fx`` keeps whole by default (``torch.nn`` modules other than
        ``nn.Sequential``). A leaf that is not a layer kind is left plain: biofx does not
        convert layers inside it.
        """
        if kind_of(m) is not None or isinstance(m, BioSynapses):
            return True
        if self.extra_leaves and isinstance(m, self.extra_leaves):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(
    model: nn.Module, leaf_modules: Iterable[type] = (), concrete_args: Optional[dict] = None, path: str = ""
) -> fx.GraphModule:
    """Trace ``model`` to a GraphModule, or raise :class:`TraceError` explaining the failure."""
    tracer = BioTracer(leaf_modules)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as err:  # fx raises many types; re-raise one that says what to do
        raise TraceError(_explain(model, path, err)) from err
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, name)


def _explain(model: nn.Module, path: str, err: Exception) -> str:
    inside = ("/torch/", "/biofx/tracing.py", "/biofx/_leaf.py")
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not any(p in f.filename for p in inside)]
    where = f" at {frames[-1].filename}:{frames[-1].lineno} `{frames[-1].line}`" if frames else ""
    label = path or "<root>"
    return (
        f"torch.fx could not trace module {label!r} ({type(model).__name__}){where}: "
        f"{type(err).__name__}: {err}. "
        "Fixes: pass leaf_modules=[ThatModuleType] so it is kept whole, pass concrete_args "
        "for arguments that steer Python control flow, or rewrite the data-dependent branch "
        "with torch.where."
    )
