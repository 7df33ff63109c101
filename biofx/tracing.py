"""Tracing: the biofx tracer and what to do when a model does not trace.

:class:`BioTracer` is ``torch.fx``'s symbolic tracer with every convertible layer kind (and
biofx's own modules) kept as a leaf, so each layer call is one ``call_module`` node.

What a plain ``torch.fx`` trace gets wrong, and how :func:`trace` avoids it:

* **Train/eval mode.** A trace bakes ``self.training`` into the graph (``dropout(...,
  training=True)``, a BatchNorm subclass's ``if self.training`` branch). Modules that derive
  from torch.nn's norm and dropout bases stay leaves (they read their flag when called), and
  the model is traced in both modes: a literal that differs between the two graphs becomes a
  runtime read of the ``training`` flag of the module whose code holds it; any other
  difference makes the innermost module where the graphs differ a leaf, and the model is
  traced again. So ``bio.train()`` / ``bio.eval()`` behave as on the original model.
* **Custom autograd.** A ``torch.autograd.Function`` called on traced values is one
  ``call_function`` node (:func:`autograd_function`), so its ``backward`` is kept; fx would
  otherwise record its forward ops and differentiate those.
* **State.** The GraphModule keeps the model's own submodules, root parameters/buffers and
  attributes (fx copies only what the graph reads), so ``state_dict()`` has every key of the
  original.
* **torch.nn transformers.** ``nn.Transformer``, its encoder/decoder and their layers are
  traced into (their fast path off while tracing), so their Linear layers are converted.
  ``nn.MultiheadAttention`` stays a leaf: it reads ``out_proj.weight`` directly.
"""

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
from .model import keep_state
from .state import BioSynapses

__all__ = ["BioTracer", "trace", "TraceError", "autograd_function", "mode_value", "leaf_reason", "LEAF_REASONS"]

#: ``gm.meta`` key: ``{module path: reason}`` for modules kept whole for a reason the report should give.
LEAF_REASONS = "biofx_leaf_reasons"

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

_FLAG = "biofx_training"  # the root's TrainingFlag submodule


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
    """Symbolic tracer whose leaves are torch.nn modules, layer kinds and user leaf types.

    ``leaf_paths``: module paths (relative to the traced root) kept whole in addition.
    """

    def __init__(self, leaf_modules: Iterable[type] = (), leaf_paths: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extra_leaves = tuple(leaf_modules)
        self.leaf_paths = frozenset(leaf_paths)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """Whether ``m`` stays one ``call_module`` node instead of being traced through.

        Leaves, in this order: a module of a registered layer kind (``nn.Linear``,
        ``nn.Conv1d/2d/3d`` and those added with :func:`biofx.register_layer_kind`), so the
        passes find each layer call as one node; biofx's own :class:`BioSynapses` state
        modules; norm and dropout modules and TorchScript modules (their train/eval behaviour must
        stay theirs); a module path the mode check chose; an instance of a ``leaf_modules`` type
        given to :func:`biofx.transform`; and
        whatever ``torch.fx`` keeps whole by default (``torch.nn`` modules other than
        ``nn.Sequential``). A leaf that is not a layer kind is left plain: biofx does not
        convert layers inside it.
        """
        if kind_of(m) is not None or isinstance(m, (BioSynapses, *MODE_LEAVES, torch.jit.ScriptModule)):
            return True
        if module_qualified_name in self.leaf_paths:
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


def mode_value(training: bool, train_value: Any, eval_value: Any) -> Any:
    """The value a traced literal takes in the module's current mode."""
    return train_value if training else eval_value


class TrainingFlag(nn.Module):
    """Returns its own ``training`` flag: the root GraphModule's mode, as a graph node."""

    def forward(self) -> bool:
        return self.training


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
    model: nn.Module, leaf_modules: Iterable[type] = (), concrete_args: Optional[dict] = None, path: str = ""
) -> fx.GraphModule:
    """Trace ``model`` in both modes to a mode-following GraphModule, or raise :class:`TraceError`.

    ``gm.meta[LEAF_REASONS]`` names the modules made leaves because their code differs
    between train and eval mode.
    """
    leaf_reasons: dict[str, str] = {}
    for _ in range(len(list(model.modules())) + 1):  # each round makes one more module a leaf
        graphs = {
            mode: _trace_once(model, leaf_modules, leaf_reasons, concrete_args, path, mode) for mode in (True, False)
        }
        differs = _mode_diff(graphs[True][1], graphs[False][1])
        if isinstance(differs, list):
            break
        candidates, node = differs
        module_path = next((c for c in candidates if c not in leaf_reasons), None)
        if module_path is None:
            raise TraceError(
                f"torch.fx could not trace module {path or '<root>'!r} ({type(model).__name__}) as one graph for "
                f"both train and eval mode: its own forward takes a different path in each (at {_describe(node)}). "
                "Fixes: read self.training inside a submodule, or pass leaf_modules=[ThatModuleType]."
            )
        leaf_reasons[module_path] = (
            f"kept whole: its forward takes a different path in train and eval mode (at {_describe(node)})"
        )
    else:  # pragma: no cover - each round adds a leaf; a model has finitely many modules
        raise AssertionError("mode-dependent leaves did not converge")
    tracer, graph = graphs[True]  # the pairs in `differs` are (train node, eval node)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    keep_state(model, gm)
    if differs:
        if any(not _innermost(node) for node, _ in differs):
            gm.add_module(_FLAG, TrainingFlag())
        _read_modes(gm.graph, differs)
        gm.graph.lint()
        gm.recompile()
    gm.meta[LEAF_REASONS] = leaf_reasons
    return gm


def _trace_once(model, leaf_modules, leaf_reasons, concrete_args, path, training):
    flags = {m: m.training for m in model.modules()}
    tracer = BioTracer(leaf_modules, leaf_reasons)
    try:
        model.train(training)
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as err:  # fx raises many types; re-raise one that says what to do
        raise TraceError(_explain(model, path, err)) from err
    finally:
        for module, flag in flags.items():
            module.training = flag
    return tracer, graph



def _mode_diff(train: fx.Graph, eval_: fx.Graph):
    """Literal differences ``[(train node, eval node)]``, or ``(module paths, node)`` where the graphs part."""
    literal = []
    train_nodes, eval_nodes = list(train.nodes), list(eval_.nodes)
    index = {node: i for i, node in enumerate(train_nodes)} | {node: i for i, node in enumerate(eval_nodes)}
    previous = None
    for a, b in zip(train_nodes, eval_nodes):
        args, kwargs = _same(a.args, b.args, index), _same(a.kwargs, b.kwargs, index)
        if a.op != b.op or a.target != b.target or args is None or kwargs is None:
            return _diverging_modules(previous, a, b), a
        if args or kwargs:
            literal.append((a, b))
        previous = a
    if len(train_nodes) != len(eval_nodes):
        a, b = (train_nodes + [None])[len(eval_nodes)], (eval_nodes + [None])[len(train_nodes)]
        return _diverging_modules(previous, a, b), a or b
    return literal


def _describe(node: fx.Node) -> str:
    target = getattr(node.target, "__name__", node.target)
    return f"{node.op} {target!s}"


def _stack(node: Optional[fx.Node]) -> list:
    """Paths of the modules whose code recorded ``node`` (a module call: without the module itself)."""
    if node is None:
        return []
    stack = [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
    return stack[:-1] if node.op == "call_module" and stack and stack[-1] == node.target else stack


def _diverging_modules(previous: Optional[fx.Node], a: Optional[fx.Node], b: Optional[fx.Node]) -> list:
    """Modules that may hold the branch where the traces part, most likely first: the deepest
    module either trace is in at the first differing node, then the deepest one that the last
    common node shares with either trace."""

    def common(x: list, y: list) -> list:
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]:
            n += 1
        return x[:n]

    deepest = max(_stack(a), _stack(b), key=len)
    shared = max(common(_stack(previous), _stack(a)), common(_stack(previous), _stack(b)), key=len)
    return [stack[-1] for stack in (deepest, shared) if stack]


def _same(a, b, index) -> Optional[bool]:
    """``None``: structurally different; ``True``: same structure, differing literals; ``False``: equal."""
    if isinstance(a, fx.Node) or isinstance(b, fx.Node):
        equal = isinstance(a, fx.Node) and isinstance(b, fx.Node) and index[a] == index[b]
        return False if equal else None
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        if type(a) is not type(b) or len(a) != len(b):
            return None
        parts = [_same(x, y, index) for x, y in zip(a, b)]
        return None if None in parts else any(parts)
    if isinstance(a, dict) or isinstance(b, dict):
        if type(a) is not type(b) or a.keys() != b.keys():
            return None
        parts = [_same(a[k], b[k], index) for k in a]
        return None if None in parts else any(parts)
    if type(a) is type(b) and (a is b or a == b):
        return False
    scalars = (bool, int, float, type(None))
    return True if isinstance(a, scalars) and isinstance(b, scalars) else None


def _innermost(node: fx.Node) -> str:
    return (_stack(node) or [""])[-1]


def _read_modes(graph: fx.Graph, differs: list) -> None:
    """Replace each mode-dependent literal by a read of its module's ``training`` flag."""
    flags: dict[str, fx.Node] = {}
    anchor = next(n for n in graph.nodes if n.op != "placeholder")
    for train_node, eval_node in differs:
        module_path = _innermost(train_node)
        if module_path not in flags:
            with graph.inserting_before(anchor):
                if module_path:
                    module = graph.get_attr(module_path)
                    flags[module_path] = graph.call_function(getattr, (module, "training"))
                else:
                    flags[module_path] = graph.call_module(_FLAG)
        flag = flags[module_path]

        def choose(a, b):
            if isinstance(a, (tuple, list)):
                return type(a)(choose(x, y) for x, y in zip(a, b))
            if isinstance(a, dict):
                return {k: choose(a[k], b[k]) for k in a}
            if isinstance(a, fx.Node) or type(a) is type(b) and (a is b or a == b):
                return a
            if a is True and b is False:
                return flag
            with graph.inserting_before(train_node):
                return graph.call_function(mode_value, (flag, a, b))

        train_node.args = choose(train_node.args, eval_node.args)
        train_node.kwargs = choose(train_node.kwargs, eval_node.kwargs)


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
