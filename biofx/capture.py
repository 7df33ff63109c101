"""Whole-model capture with ``torch.export``, to see models ``torch.fx`` cannot trace.

Hugging Face transformers stop ``torch.fx`` at their ``*args/**kwargs`` decorators, their
attention-interface dispatch and their shape-dependent mask code. Non-strict
``torch.export`` runs the Python code itself (with fake tensors) and records one graph of
ATen ops. :func:`export_graph` turns it into a model graph like :class:`~biofx.tracing.BioTracer`'s,
for the plan, ``bio.bio_graph`` and the drawings (the model still runs its own Python):

* **Layer sites.** Every call of a module of a registered layer kind is recognized from
  ``node.meta["nn_module_stack"]`` (one key per call: ``...query@1`` is the second call)
  and its nodes (``aten.linear``; ``pad`` + ``conv2d``; Conv1D's ``view``/``addmm``/``view``)
  are collapsed back into one ``call_module`` node on its single input. A layer with a call
  that does not collapse (a second tensor input) stays plain, and the report says why.
* **Names.** The exported graph reads parameters with ``get_attr`` by their original paths
  and the captured module holds the model's own child modules.
* **Inputs.** Export needs example inputs (a tensor, a tuple, or a dict of keyword inputs
  such as ``input_ids`` and ``attention_mask``). Hugging Face models get default examples
  (:func:`default_inputs`) and are captured with ``config.use_cache`` off."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import logging
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn

from .layers import kind_of
from .tracing import TraceError

__all__ = ["CaptureError", "Capture", "export_graph", "default_inputs", "split_inputs", "submodule"]

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
    """Capture ``model`` whole with non-strict ``torch.export``, in its current mode (see the
    module docstring). ``example_inputs``: a dict of keyword arguments, a tuple of positional
    ones, or one tensor. Raises :class:`CaptureError` naming what failed.
    """
    args, kwargs = split_inputs(example_inputs)
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as err:
        raise CaptureError(f"example_inputs do not fit {type(model).__name__}.forward: {err}") from err
    names = tuple(bound.arguments)
    # Hugging Face's KV cache is for generation and no pytree: keep it out (T5's stacks
    # have their own configs)
    caching = {id(c): c for m in model.modules() if getattr(c := getattr(m, "config", None), "use_cache", False)}
    try:
        for config in caching.values():
            config.use_cache = False
        with _quiet_torch_logs():
            program = torch.export.export(model, args, kwargs, strict=False)
    except Exception as err:  # export raises many types; say what
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__}: {type(err).__name__}: {_first_line(err)}"
        ) from err
    finally:
        for config in caching.values():
            config.use_cache = True
    exported = program.module(check_guards=False)
    plain = _collapse_layer_calls(exported.graph, model)
    return Capture(_module(model, exported), names, plain)


@contextlib.contextmanager
def _quiet_torch_logs():
    """Nothing on the terminal while export runs: a failed attempt prints its partial FX graphs
    to stderr (``GraphModule``'s error report) and logs guard notes; :class:`CaptureError` says
    what failed, in one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of example inputs given as a tensor, a tuple of positional inputs or a
    dict of keyword inputs."""
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
        module = submodule(model, path)
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
        if not node.users and node.op == "get_attr":
            graph.erase_node(node)
    return plain


def submodule(model: nn.Module, path: str) -> Optional[nn.Module]:
    """``model.get_submodule(path)``, or ``None`` where there is none."""
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

