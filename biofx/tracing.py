"""Tracing: the biofx tracer, which sees a model whole as an ``fx.GraphModule``.

:class:`BioTracer` is ``torch.fx``'s symbolic tracer with every convertible layer kind (and
biofx's own modules) kept as a leaf, so each layer call is one ``call_module`` node. The
traced graph is for seeing, not for running: the plan reads it (execution order, the output
layer, layers called with other arguments or whose weight is read directly), and
``bio.bio_graph`` and the drawings show it. The model itself keeps its module tree and its
Python ``forward`` (:mod:`biofx.bio_layer`).

* **Custom autograd.** A ``torch.autograd.Function`` called on traced values is one
  ``call_function`` node (:func:`autograd_function`); fx cannot trace into its ``apply``.
* **torch.nn transformers.** ``nn.Transformer``, its encoder/decoder and their layers are
  traced into (their fast path off while tracing), so their Linear layers are converted.
  ``nn.MultiheadAttention`` stays a leaf: it reads ``out_proj.weight`` directly."""

from __future__ import annotations

import contextlib
import importlib
import traceback
from typing import Any, Iterable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.modules.transformer as nn_transformer

from .layers import kind_of
from .state import BioSynapses

__all__ = ["BioTracer", "trace", "TraceError", "autograd_function", "leaf_reason"]

#: Modules whose behaviour depends on ``self.training``: leaves even when defined outside torch.nn.
MODE_LEAVES = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd, nn.RReLU)

#: torch.nn modules traced into: plain Python forwards that call convertible layers.
TRACED_TORCH_MODULES = (
    nn.Transformer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


def leaf_reason(module: nn.Module) -> str:
    """Why a module is kept whole (a leaf), for the report of the layers inside it."""
    if isinstance(module, nn.MultiheadAttention):
        return "kept whole: nn.MultiheadAttention reads out_proj.weight directly (F.multi_head_attention_forward)"
    if isinstance(module, torch.jit.ScriptModule):
        return "kept whole: TorchScript cannot be rewritten; transform the Python module before torch.jit.script"
    return "not traced"


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
        modules; norm and dropout modules and TorchScript modules (their train/eval behaviour must
        stay theirs); an instance of a ``leaf_modules`` type
        given to :func:`biofx.transform`; and
        whatever ``torch.fx`` keeps whole by default (``torch.nn`` modules other than
        ``nn.Sequential``). A leaf that is not a layer kind is left plain: biofx does not
        convert layers inside it.
        """
        if kind_of(m) is not None or isinstance(m, (BioSynapses, *MODE_LEAVES, torch.jit.ScriptModule)):
            return True
        if self.extra_leaves and isinstance(m, self.extra_leaves):
            return True
        if type(m) in TRACED_TORCH_MODULES:
            return False
        return super().is_leaf_module(m, module_qualified_name)

    def trace(self, root, concrete_args=None) -> fx.Graph:
        with _tracing_patches():
            return super().trace(root, concrete_args)


# -- graph functions recorded for calls fx cannot trace into --------------------------------
_FUNCTIONS: dict[str, type] = {}


def _function_key(function: type) -> str:
    """The Function's import path (``#n`` added when another class of that name is registered)."""
    base = f"{function.__module__}.{function.__qualname__}"
    key, n = base, 1
    while _FUNCTIONS.get(key, function) is not function:
        key, n = f"{base}#{n}", n + 1
    _FUNCTIONS[key] = function
    return key


def autograd_function(key: str, *args: Any, **kwargs: Any) -> Any:
    """``Function.apply(*args)`` for the ``torch.autograd.Function`` named ``key`` (its import path).

    A graph node keeps the Function whole, so autograd uses its own ``backward``.
    """
    function = _FUNCTIONS.get(key)
    if function is None:  # an unpickled model in a fresh process: import the class by its path
        module, _, name = key.partition("#")[0].rpartition(".")
        function = importlib.import_module(module)
        for part in name.split("."):
            function = getattr(function, part)
        _FUNCTIONS[key] = function
    return function.apply(*args, **kwargs)


def _proxies(args: Any, kwargs: Any) -> list:
    found = []
    fx.node.map_aggregate((args, kwargs), lambda a: found.append(a) if isinstance(a, fx.Proxy) else None)
    return found


def _record_if_traced(original, target=None, prefix=()):
    """``original`` that, given Proxies, records one ``call_function`` node instead of running."""

    def wrapper(*args, **kwargs):
        proxies = _proxies(args, kwargs)
        if not proxies:
            return original(*args, **kwargs)
        return proxies[0].tracer.create_proxy("call_function", target or original, (*prefix, *args), kwargs)

    return wrapper


#: torch.nn helpers that inspect their tensor arguments (dtype, is_nested): one node each when traced.
_RECORDED = (
    (F, "_canonical_mask"),
    (F, "_none_or_dtype"),
    (nn_transformer, "_get_seq_len"),
    (nn_transformer, "_detect_is_causal_mask"),
)


@contextlib.contextmanager
def _tracing_patches():
    """While tracing: autograd Functions and torch.nn's mask helpers become single nodes; MHA fast path off."""
    apply = torch.autograd.Function.__dict__["apply"]

    def traced_apply(cls, *args, **kwargs):
        bound = apply.__get__(None, cls)
        return _record_if_traced(bound, autograd_function, (_function_key(cls),))(*args, **kwargs)

    originals = [(module, name, getattr(module, name)) for module, name in _RECORDED]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.autograd.Function.apply = classmethod(traced_apply)
    for module, name, fn in originals:
        setattr(module, name, _record_if_traced(fn))
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.autograd.Function.apply = apply
        for module, name, fn in originals:
            setattr(module, name, fn)
        torch.backends.mha.set_fastpath_enabled(fastpath)


# -- trace ---------------------------------------------------------------------------------
def trace(
    model: nn.Module, leaf_modules: Iterable[type] = (), concrete_args: Optional[dict] = None
) -> fx.GraphModule:
    """The model graph of ``model`` (layers as ``call_module`` leaves), or :class:`TraceError`.

    The GraphModule holds the model's own submodules (not copies), so its ``call_module``
    targets are the model's layers.
    """
    tracer = BioTracer(leaf_modules)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as err:  # fx raises many types; re-raise one that says what to do
        raise TraceError(_explain(model, err)) from err
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    for name, child in model._modules.items():  # the originals, not fx's partial copies
        gm._modules[name] = child
    return gm


def _explain(model: nn.Module, err: Exception) -> str:
    inside = ("/torch/", "/biofx/tracing.py", "/biofx/_leaf.py")
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not any(p in f.filename for p in inside)]
    where = f" at {frames[-1].filename}:{frames[-1].lineno} `{frames[-1].line}`" if frames else ""
    return (
        f"torch.fx could not trace {type(model).__name__}{where}: "
        f"{type(err).__name__}: {err}. "
        "Fixes: pass leaf_modules=[ThatModuleType] so it is kept whole, pass concrete_args "
        "for arguments that steer Python control flow, or rewrite the data-dependent branch "
        "with torch.where."
    )
