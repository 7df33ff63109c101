"""Whole-model capture with ``torch.export`` for models ``torch.fx`` cannot trace.

Hugging Face transformers 5.x stop ``torch.fx`` at their ``*args/**kwargs`` decorators
(``check_model_inputs``, ``can_return_tuple``), their attention-interface dispatch and their
shape-dependent mask code; the fallback (:mod:`biofx.fallback`) then converts them in many
parts and the model is never one graph. Non-strict ``torch.export`` runs the Python code
itself (with fake tensors), so all of that is simply executed, and it records one graph of
ATen ops. :func:`export_graph` turns that graph into the form the passes already rewrite:

* **Layer sites.** Every call of a module of a registered layer kind is recognized from
  ``node.meta["nn_module_stack"]`` (one key per call: ``...query@1`` is the second call)
  and its nodes (``aten.linear``; ``pad`` + ``conv2d``; Conv1D's ``view``/``addmm``/``view``)
  are collapsed back into one ``call_module`` node on its single input, exactly what
  :class:`~biofx.tracing.BioTracer` produces. Plan and passes run unchanged. A layer with a
  call that does not collapse (a second tensor input) stays plain at all its calls, and the
  report says why.
* **Names.** The exported graph reads parameters with ``get_attr`` by their original paths
  (``encoder.layer.0.attention.self.query.weight``) and the captured module holds the
  model's own child modules, so parameter names, tied weights and ``state_dict`` are the
  original model's.
* **Modes.** An export bakes the train/eval mode into the graph (``dropout(x, 0.1, True)``;
  BERT's SDPA gets ``dropout_p=0.1`` only in training). The model is exported in both modes;
  the two graphs must be the same up to literal arguments, and each literal that differs
  becomes ``mode_value(self.training, train_value, eval_value)``, so ``bio.train()`` /
  ``bio.eval()`` behave as the original (BatchNorm's train-only ``num_batches_tracked += 1``
  becomes ``+= mode_value(self.training, 1, 0)``). Graphs that differ in structure raise
  :class:`CaptureError` (and :func:`biofx.transform` falls back to parts).
* **Inputs.** Export needs example inputs; every dimension of every tensor is exported
  dynamic where the model allows it (``Dim.AUTO``), so other batch sizes and sequence lengths
  run. The graph takes exactly the inputs of the example (by name): an input the example did
  not have (``labels``, ``token_type_ids``) cannot be passed later. Hugging Face models get
  default examples (:func:`default_inputs`) and are captured with ``config.use_cache`` off:
  the graph is for training and evaluation; it returns no KV cache for generation.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn
from torch.export import Dim
from torch.fx.experimental import _config as fx_config
from torch.utils import _pytree as pytree

from .layers import kind_of
from .tracing import TraceError

__all__ = ["CaptureError", "Capture", "export_graph", "default_inputs", "mode_value"]

STACK = "nn_module_stack"
LIFTED = "biofx_lifted"


class CaptureError(TraceError):
    """``torch.export`` could not capture the model as one graph; the message says why."""


@dataclasses.dataclass
class Capture:
    """A captured model: the graph (layer calls as ``call_module``), its input names, and
    ``{layer: reason}`` for layers whose calls could not be made layer sites."""

    gm: fx.GraphModule
    inputs: tuple
    plain: dict

    @property
    def label(self) -> str:
        return f"export (inputs: {', '.join(self.inputs)})"


def mode_value(training: bool, train: Any, eval: Any) -> Any:
    """The argument a mode-dependent op gets: ``train`` in training mode, else ``eval``."""
    return train if training else eval


def default_inputs(model: nn.Module) -> Optional[dict]:
    """Example inputs for a Hugging Face model, or ``None`` for another model.

    Its main input: ``input_ids`` (3 × 5, Hugging Face's ``DUMMY_INPUTS``) with an all-ones
    ``attention_mask``; ``pixel_values`` (2 images of ``config.image_size``); Whisper's
    ``input_features`` (2 × ``num_mel_bins`` × ``2·max_source_positions``). Encoder-decoders
    also get ``decoder_input_ids`` (length 4: a length of its own).
    """
    config, name = getattr(model, "config", None), getattr(model, "main_input_name", None)
    first = next(model.parameters(), None)
    if config is None or first is None:
        return None
    params = inspect.signature(model.forward).parameters
    ids = torch.tensor([[7, 6, 0, 0, 1], [1, 2, 3, 0, 0], [0, 0, 0, 4, 5]], device=first.device)
    if name == "input_ids":
        inputs = {"input_ids": ids}
        if "attention_mask" in params:
            inputs["attention_mask"] = torch.ones_like(ids)
    elif name == "pixel_values" and hasattr(config, "image_size"):
        size = config.image_size
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        channels = getattr(config, "num_channels", 3)
        inputs = {"pixel_values": torch.randn(2, channels, *size, device=first.device, dtype=first.dtype)}
    elif name == "input_features" and hasattr(config, "num_mel_bins") and hasattr(config, "max_source_positions"):
        shape = (2, config.num_mel_bins, 2 * config.max_source_positions)
        inputs = {"input_features": torch.randn(shape, device=first.device, dtype=first.dtype)}
    else:
        return None
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        batch = next(iter(inputs.values())).shape[0]
        inputs["decoder_input_ids"] = ids[:batch, :4].clone()  # its own tensor and length
    return inputs


def export_graph(model: nn.Module, example_inputs: Any) -> Capture:
    """Capture ``model`` whole with non-strict ``torch.export`` (see the module docstring).

    ``example_inputs``: a dict of keyword arguments, a tuple of positional ones, or one tensor.
    Raises :class:`CaptureError` naming what failed.
    """
    args, kwargs = _split_inputs(example_inputs)
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as err:
        raise CaptureError(f"example_inputs do not fit {type(model).__name__}.forward: {err}") from err
    names = tuple(bound.arguments)
    dynamic = {name: pytree.tree_map(_all_dims_dynamic, value) for name, value in bound.arguments.items()}
    graphs = {}
    modes = {m: m.training for m in model.modules()}
    # Hugging Face's KV cache is for generation and no pytree: keep it out (T5's stacks
    # have their own configs)
    caching = {id(c): c for m in model.modules() if getattr(c := getattr(m, "config", None), "use_cache", False)}
    try:
        for config in caching.values():
            config.use_cache = False
        for training in (True, False):
            model.train(training)
            try:
                # no duck sizing: equal example sizes (encoder and decoder length) stay independent
                with fx_config.patch(use_duck_shape=False):
                    program = torch.export.export(model, args, kwargs, dynamic_shapes=dynamic, strict=False)
            except Exception as err:  # export raises many types; say which mode and what
                raise CaptureError(
                    f"torch.export could not capture {type(model).__name__} in "
                    f"{'train' if training else 'eval'} mode: {type(err).__name__}: {_first_line(err)}"
                ) from err
            graphs[training] = program.module(check_guards=False)
    finally:
        for module, training in modes.items():
            module.training = training
        for config in caching.values():
            config.use_cache = True
    exported = graphs[True]
    _merge_modes(exported.graph, graphs[False].graph)
    plain = _collapse_layer_calls(exported.graph, model)
    gm = _module(model, exported)
    return Capture(gm, names, plain)


def _all_dims_dynamic(value: Any) -> Optional[dict]:
    """Every dimension of a tensor dynamic where the model allows it (else specialized)."""
    return {d: Dim.AUTO for d in range(value.dim())} if isinstance(value, torch.Tensor) else None


def _split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise TypeError(
        "example_inputs must be a dict of keyword arguments, a tuple of positional arguments or a "
        f"tensor, got {type(example_inputs).__name__}"
    )


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0]


# -- train and eval in one graph ------------------------------------------------------------
def _merge_modes(train: fx.Graph, eval: fx.Graph) -> None:
    """Make ``train`` serve both modes: literals that differ from ``eval`` read ``self.training``.

    Two differences beyond literals are understood: a ``contiguous`` one mode records and
    the other does not (strides differ: SDPA with dropout) is a copy of its input and is
    matched as that input; a count only training makes (BatchNorm's
    ``num_batches_tracked += 1``) adds 0 in eval mode.
    """
    train_nodes, eval_nodes = list(train.nodes), list(eval.nodes)
    env: dict = {}  # eval node -> train node
    copies: dict = {}  # train-only contiguous -> its input
    training = None

    def select(node: fx.Node, train_value: Any, eval_value: Any) -> fx.Node:
        nonlocal training
        if training is None:
            with train.inserting_before(train_nodes[0]):
                training = train.create_node("get_attr", "training")
        with train.inserting_before(node):
            return train.call_function(mode_value, (training, train_value, eval_value))

    i = j = 0
    while i < len(train_nodes) or j < len(eval_nodes):
        t = train_nodes[i] if i < len(train_nodes) else None
        e = eval_nodes[j] if j < len(eval_nodes) else None
        if t is not None and e is not None and (t.op, t.target) == (e.op, e.target):
            i, j = i + 1, j + 1
        elif t is not None and t.target in _COPIES:
            copies[t] = t.args[0]
            i += 1
            continue
        elif e is not None and e.target in _COPIES:
            env[e] = env[e.args[0]]
            j += 1
            continue
        elif t is not None and _is_training_count(t):
            t.args = (t.args[0], select(t, t.args[1], 0), *t.args[2:])
            i += 1
            continue
        else:
            raise CaptureError(_mode_mismatch(t, e))
        env[e] = t
        t_args, t_kwargs = _full_arguments(t)
        e_args, e_kwargs = fx.node.map_arg(_full_arguments(e), env.__getitem__)

        def merge(tv, ev):
            if isinstance(tv, (list, tuple)) and isinstance(ev, (list, tuple)) and len(tv) == len(ev):
                return type(tv)(merge(a, b) for a, b in zip(tv, ev))
            if isinstance(tv, fx.Node) or isinstance(ev, fx.Node):
                if copies.get(tv, tv) is copies.get(ev, ev):
                    return tv
                raise CaptureError(_mode_mismatch(t, e))
            if type(tv) is type(ev) and tv == ev:
                return tv
            return select(t, tv, ev)

        t.args = merge(t_args, e_args)
        t.kwargs = {k: merge(v, e_kwargs[k]) for k, v in t_kwargs.items()}


def _is_training_count(node: fx.Node) -> bool:
    """``buffer += number`` (BatchNorm's ``num_batches_tracked``), recorded in training only."""
    return (
        node.target is torch.ops.aten.add_.Tensor
        and node.args[0].op == "get_attr"
        and isinstance(node.args[1], (int, float))
        and not node.users
    )


#: Ops that copy their input: recorded in one mode only when the strides differ.
_COPIES = (torch.ops.aten.contiguous.default,)


def _full_arguments(node: fx.Node) -> tuple[tuple, dict]:
    """``node``'s arguments with the op's defaults filled in (an export omits defaulted ones)."""
    schema = getattr(node.target, "_schema", None)
    if node.op != "call_function" or schema is None:
        return node.args, dict(node.kwargs)
    args, kwargs = list(node.args), dict(node.kwargs)
    for index, argument in enumerate(schema.arguments):
        if argument.kwarg_only:
            if argument.name not in kwargs and argument.has_default_value():
                kwargs[argument.name] = argument.default_value
        elif index >= len(args) and argument.has_default_value():
            args.append(kwargs.pop(argument.name, argument.default_value))
    return tuple(args), kwargs


def _mode_mismatch(t: Optional[fx.Node], e: Optional[fx.Node]) -> str:
    def show(node):
        return node.format_node() if node is not None else "graph ends"

    return (
        "the model's graph differs between train and eval mode beyond literal arguments "
        f"(train: {show(t)}; eval: {show(e)}), "
        "so one exported graph cannot serve both modes"
    )


# -- layer calls back to call_module --------------------------------------------------------
def _collapse_layer_calls(graph: fx.Graph, model: nn.Module) -> dict:
    """Replace the nodes of each layer call by ``call_module(layer, (x,))``; return plain reasons.

    A layer is collapsed at all its calls or at none, so no call bypasses its bio nodes.
    """
    calls: dict = {}  # nn_module_stack key (one per call) -> (path, module, nodes)
    for node in graph.nodes:
        if node.op != "call_function" or not node.meta.get(STACK):
            continue
        key, (path, _) = next(reversed(node.meta[STACK].items()))
        module = _submodule(model, path)
        if module is not None and kind_of(module) is not None:
            calls.setdefault(key, (path, module, []))[2].append(node)
    params = dict(model.named_parameters(remove_duplicate=False))
    sites: dict = {}  # path -> [(input, output, nodes)] for every call
    plain: dict = {}
    for path, module, nodes in calls.values():
        members = set(nodes)
        own = {id(p) for p in module.parameters(recurse=False)}
        inputs = {
            arg
            for node in nodes
            for arg in node.all_input_nodes
            if arg not in members
            and (arg.op == "get_attr" or isinstance(arg.meta.get("val"), torch.Tensor))  # not a size
            and not (arg.op == "get_attr" and id(params.get(arg.target)) in own)
        }
        outputs = [node for node in nodes if any(user not in members for user in node.users)]
        if len(inputs) != 1 or len(outputs) != 1:
            plain[path] = (
                f"a call of it has {len(inputs)} tensor input(s) and {len(outputs)} output(s) in the "
                "exported graph, not one of each"
            )
        sites.setdefault(path, []).append((*inputs, *outputs, nodes))
    replaced: dict = {}  # a collapsed call's output -> its call_module (the input of a later call)
    for path, calls_of_path in sites.items():
        if path in plain:
            continue
        for x, out, nodes in calls_of_path:
            with graph.inserting_after(out):
                site = graph.call_module(path, (replaced.get(x, x),))
            replaced[out] = site
            site.meta.update({k: out.meta[k] for k in ("val", "stack_trace", STACK) if k in out.meta})
            out.replace_all_uses_with(site)
            for node in reversed(nodes):
                graph.erase_node(node)
    for node in reversed(graph.nodes):  # weights and mode choices only the replaced nodes read
        if not node.users and (node.op == "get_attr" or node.target is mode_value):
            graph.erase_node(node)
    return plain


def _submodule(model: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _module(model: nn.Module, exported: fx.GraphModule) -> fx.GraphModule:
    """A GraphModule of the graph whose children are ``model``'s own child modules.

    What the model does not have (tensors and submodules export lifted out of ``forward``)
    is taken from the exported module into a ``biofx_lifted`` child, tensors as
    non-persistent buffers (out of ``state_dict``); the user's modules are not changed.
    """
    holder = nn.Module()
    holder._modules.update(model._modules)
    holder._parameters.update(model._parameters)
    holder._buffers.update(model._buffers)
    holder._non_persistent_buffers_set.update(model._non_persistent_buffers_set)
    lifted = nn.Module()
    for node in exported.graph.nodes:
        if node.op not in ("get_attr", "call_module") or node.target == "training":
            continue
        try:
            _attr(holder, node.target)
        except AttributeError:
            name = node.target.replace(".", "_")
            value = _attr(exported, node.target)
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                lifted.register_buffer(name, value, persistent=False)
            else:
                setattr(lifted, name, value)
            node.target = f"{LIFTED}.{name}"
    if lifted._buffers or lifted._modules or lifted._parameters:
        holder.add_module(LIFTED, lifted)
    exported.graph._tracer_cls = None  # export's tracer cannot re-trace the code when unpickling
    gm = fx.GraphModule(holder, exported.graph, type(model).__name__)
    for name, child in holder._modules.items():  # the originals, not fx's partial copies
        gm._modules[name] = child
    return gm


def _attr(module: nn.Module, target: str) -> Any:
    for item in target.split("."):
        module = getattr(module, item)
    return module

