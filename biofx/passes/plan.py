"""Plan: find every convertible layer and choose its config.

Not a graph rewrite: it walks the model graph (:mod:`biofx.tracing`, :mod:`biofx.capture`)
in execution order, or the module tree when no graph could be captured, finds the layers of
registered kinds, selects each layer's config with the :class:`~biofx.ConfigMap` (by its
module path) and lists every layer of a registered kind that is *not* converted, with the
reason. Numbering (index, seed, weight splitting) is the pipeline's next step
(:func:`biofx.pipeline.number`).

Conversion is strict: only the exact registered types (``nn.Linear``, ``nn.Conv2d``, ...,
and kinds added with :func:`biofx.register_layer_kind`). A subclass (its own ``forward``, a
QAT layer), a quantized or parametrized layer stays plain with the reason, so nothing
custom vanishes.

Which stage writes which :class:`PlannedLayer` field: the plan all but the ones below;
``number`` ``index``, ``total``, ``seed``, ``split`` (and LAYER_ADAPTIVE's l and L in
``config``); the build ``name``, ``sites`` and ``state`` (for a tied weight, the state of
its first layer); the passes ``sites``, ``weight_nodes`` (inline_layers, then each chain)
and ``state`` (attach_state).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import parametrize

from ..config import BioConfig, ConfigMap
from ..layers import LAYER_KINDS, LayerKind, kind_of
from ..tracing import BioTracer, leaf_reason
from . import tags


@dataclasses.dataclass
class PlannedLayer:
    """The plan of one converted layer (a module; it may be called at several sites).

    ``name`` is the layer's target in the graph being rewritten: its path in the model graph
    while planning, ``""`` in the layer's own graph (:func:`biofx.bio_layer.layer_graph`).
    ``path`` is its module path in the model (tags and reports name it).
    """

    name: str
    module: nn.Module
    kind: LayerKind
    config: BioConfig
    rule: str
    sites: list  # call nodes; in the layer's graph, replaced by inline_layers_pass with functional calls
    path: str = ""
    index: int = 0
    total: int = 1
    seed: int = 0
    split: bool = False
    state: Optional[nn.Module] = None  # its BioSynapses (shared by the layers of a tied weight)
    shared_with: tuple = ()  # other modules' names for its weight when non-bio modules read it too
    weight_nodes: dict = dataclasses.field(default_factory=dict)  # site -> node feeding the weight


def skip_split_marked(module: nn.Module) -> bool:
    """Whether ``BioConverter.mark_skip_weight_splitting`` (or the reference's token) marks it."""
    return bool(getattr(module, "last_module_token", False) or getattr(module, "_biofx_skip_split", False))


def choose(path: str, module: nn.Module, kind: LayerKind, config_map: ConfigMap):
    """``(config, rule)`` for a layer biofx converts, or ``(None, reason)`` for one left plain."""
    check_initialized(path, module)
    config, rule = config_map.select(path, module)
    if config is None:
        return None, f"left plain by ConfigMap ({rule})"
    why = strict_reason(module, kind)
    return (None, why) if why is not None else (config, rule)


def strict_reason(module: nn.Module, kind: LayerKind) -> Optional[str]:
    """Why ``module`` (of a registered kind or a subclass of one) is not converted, or ``None``."""
    cls = type(module)
    if parametrize.is_parametrized(module, "weight"):
        return "its weight is computed by a parametrization (e.g. weight_norm), not stored"
    if cls is not kind.module_type:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if hasattr(module, "weight_fake_quant") or ".qat" in cls.__module__:
            return (
                f"a quantization-aware (QAT) layer ({name}): its fake-quantized forward would be lost. "
                "Transform the float model, then prepare it for QAT"
            )
        own_forward = any("forward" in vars(c) for c in cls.__mro__[: cls.__mro__.index(kind.module_type)])
        what = "overrides forward" if own_forward else f"is a subclass of {kind.module_type.__name__}"
        return (
            f"its class {name} {what}; biofx converts only the exact layer types it knows, so custom code is "
            f"never lost. To convert it, register the class: biofx.register_layer_kind(LayerKind(..., "
            f"module_type={cls.__name__}))"
        )
    if not isinstance(getattr(module, "weight", None), nn.Parameter):
        return "its weight is not an nn.Parameter"
    return kind.unsupported(module)


def plan_layers(gm: fx.GraphModule, config_map: ConfigMap, model: nn.Module):
    """From a model graph: the bio layers in execution order and ``(name, reason)`` for the
    layers left plain. Whether every ConfigMap entry matched a layer is checked by the caller."""
    layers: dict[str, PlannedLayer] = {}
    plain: dict[str, str] = {}
    bypasses = _bypasses(gm)
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        kind = kind_of(module)
        if kind is None:
            continue
        if node.target in layers:
            layers[node.target].sites.append(node)
            continue
        if node.target in plain:
            continue
        config, rule = choose(node.target, module, kind, config_map)
        if config is None:
            plain[node.target] = rule
        elif len(node.args) != 1 or node.kwargs:
            plain[node.target] = "called with arguments other than one input tensor"
        elif node.target in bypasses:
            plain[node.target] = bypasses[node.target]
        else:
            layers[node.target] = PlannedLayer(node.target, module, kind, config, rule, [node], path=node.target)
    return list(layers.values()), _explain_plain(gm, model, layers, plain)


def plan_modules(model: nn.Module, config_map: ConfigMap, leaf_modules: tuple = ()):
    """From the module tree (no graph: registration order stands for execution order), as
    :func:`plan_layers`. Layers inside modules the tracer keeps whole (``nn.MultiheadAttention``
    reads ``out_proj.weight`` directly) stay plain, as in a traced model."""
    tracer = BioTracer(leaf_modules)
    leaves = [
        (path, module)
        for path, module in model.named_modules()
        if path
        and kind_of(module) is None
        and not isinstance(module, (nn.ModuleList, nn.ModuleDict))  # containers: searched
        and tracer.is_leaf_module(module, path)
    ]
    layers, plain = [], list(scripted_layers(model)) + list(quantized_layers(model))
    for path, module in convertible_modules(model):
        owner = next(((p, m) for p, m in leaves if path.startswith(p + ".")), None)
        if owner is not None:
            plain.append((path, f"inside leaf module {owner[0]!r} ({type(owner[1]).__name__}), {leaf_reason(owner[1])}"))
        else:
            kind = kind_of(module)
            config, rule = choose(path, module, kind, config_map)
            if config is None:
                plain.append((path, rule))
            else:
                layers.append(PlannedLayer(path, module, kind, config, rule, [], path=path))
    return layers, plain


def _bypasses(gm: fx.GraphModule) -> dict:
    """Layers whose weight the graph also uses outside their call: ``{name: reason}``.

    A ``get_attr`` of ``<layer>.weight`` (code reading ``self.fc.weight``) or a leaf module
    call that contains the layer would use the stored weight, which the bio nodes never see.
    """
    out = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target.endswith(".weight") and _uses_value(node):
            name = node.target[: -len(".weight")]
            out[name] = f"its weight is also read directly (graph node {node.name!r}), bypassing the bio nodes"
        elif node.op == "call_module":
            for name, module in gm.get_submodule(node.target).named_modules():
                if name and kind_of(module) is not None:
                    out[f"{node.target}.{name}"] = (
                        f"also used inside leaf module {node.target!r} "
                        f"({type(gm.get_submodule(node.target)).__name__}), "
                        "which the bio nodes do not see"
                    )
    return out


#: tensor attributes and methods that read metadata, not values
_METADATA = frozenset(
    {"dtype", "shape", "device", "ndim", "layout", "is_cuda", "is_meta", "requires_grad", "size", "dim"}
)


def _uses_value(node: fx.Node) -> bool:
    """Whether some user of ``node`` reads its values (not only ``.dtype``, ``.shape``, ...)."""
    for user in node.users:
        if user.op == "call_function" and user.target is getattr and user.args[1] in _METADATA:
            continue
        if user.op == "call_method" and user.target in _METADATA:
            continue
        return True
    return False


def check_weight_flow(gm: fx.GraphModule, layers: list) -> None:
    """Internal invariant after the passes: each converted layer's weight reaches its calls
    through the bio chain only, and nothing else in the graph reads it."""
    for layer in layers:
        target = f"{layer.name}.weight" if layer.name else "weight"
        readers = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target == target and _uses_value(n)]
        assert readers and all(tags.get_tag(n) is not None for n in readers), (layer.name, readers)
        for site in layer.sites:
            node = layer.weight_nodes[site]
            while node.op != "get_attr":
                assert tags.get_tag(node) is not None, (layer.name, node)
                node = node.args[0]
            assert node.target == target, (layer.name, node.target)


def check_initialized(name: str, module: nn.Module) -> None:
    """A lazy layer (``nn.LazyLinear``) has no weight until its first forward: say so."""
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters(recurse=False)):
        raise ValueError(
            f"layer {name or '<root>'!r} ({type(module).__name__}) has uninitialized parameters: lazy layers get "
            "their shapes on the first forward. Run one forward pass with an example input before biofx.transform."
        )


def output_layers(gm: Optional[fx.GraphModule], model: nn.Module) -> set:
    """Paths of the layers (bio or plain) whose outputs are the model's outputs: reached from the
    graph's output without passing through another layer. Without a graph, the last layer in
    module order."""
    if gm is None:
        names = [name for name, _ in convertible_modules(model)]
        return set(names[-1:])
    found, seen = set(), set()
    stack = [next(node for node in reversed(gm.graph.nodes) if node.op == "output")]
    while stack:
        for arg in stack.pop().all_input_nodes:
            if arg in seen:
                continue
            seen.add(arg)
            if arg.op == "call_module" and kind_of(gm.get_submodule(arg.target)) is not None:
                found.add(arg.target)
            else:
                stack.append(arg)
    return found


def plan_splitting(layers: list[PlannedLayer], outputs: set = frozenset()) -> None:
    """Decide ``split`` for each layer: not for the layers at ``outputs`` (their outputs are
    the model's) or marked to skip. Γ must divide a split layer's output count; every layer
    where it does not is named in one error."""
    wrong = []
    for layer in layers:
        if not layer.config.splits or layer.path in outputs or skip_split_marked(layer.module):
            continue
        gamma = layer.config.weight_splitting_Gamma
        channels = layer.kind.out_features(layer.module)
        if channels % gamma:
            wrong.append((layer, gamma, channels))
        else:
            layer.split = True
    if wrong:
        raise ValueError(_split_error(wrong))


def _split_error(wrong: list) -> str:
    def fix(layers) -> str:
        skips = [f"BioConverter.mark_skip_weight_splitting({python_path(l.path)})" for l in layers if l.path]
        if not skips:
            return "turn splitting off with weight_splitting_Gamma=0"
        return f"leave {'it' if len(skips) == 1 else 'them'} unsplit with {'; '.join(skips)} or a ConfigMap entry"

    if len(wrong) == 1:
        (layer, gamma, channels), = wrong
        return (
            f"weight_splitting_Gamma ({gamma}) must evenly divide the number of features ({channels}) of layer "
            f"{layer.path or '<root>'!r} ({layer.kind.name}, {channels} outputs). "
            f"Choose a Γ that divides {channels}, or {fix([layer])}."
        )
    lines = "".join(
        f"\n  {layer.path!r} ({layer.kind.name}, {channels} outputs, Γ={gamma})" for layer, gamma, channels in wrong
    )
    return (
        f"weight_splitting_Gamma must evenly divide the number of features of every split layer; it does not "
        f"for {len(wrong)} layers:{lines}\nChoose a Γ that divides them, or {fix([l for l, _, _ in wrong])}."
    )


def python_path(path: str, root: str = "model") -> str:
    """The Python expression of a module path: ``encoder.layer.0.dense`` → ``model.encoder.layer[0].dense``."""
    return root + "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in path.split("."))


def convertible_modules(model: nn.Module):
    """``(name, module)`` for every module of a registered layer kind."""
    for name, module in model.named_modules():
        if kind_of(module) is not None:
            yield name, module


def scripted_layers(model: nn.Module):
    """``(name, reason)`` for the layers of a registered kind inside TorchScript submodules."""
    kinds = {kind.module_type.__name__ for kind in LAYER_KINDS.values()}
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule) and getattr(module, "original_name", None) in kinds:
            owner = next(
                (path for path, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule) and
                 (path == name or name.startswith(path + "."))),
                name,
            )
            yield name, (
                f"inside TorchScript module {owner!r}: compiled code cannot be rewritten; "
                "transform the Python module before torch.jit.script"
            )


#: torch's quantized module packages: their layers hold packed weights biofx cannot rewrite
_QUANTIZED = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def quantized_layers(model: nn.Module):
    """``(name, reason)`` for quantized layers (``torch.ao.quantization.quantize_dynamic``, ...)."""
    for name, module in model.named_modules():
        cls = type(module)
        if cls.__module__.startswith(_QUANTIZED) and cls.__name__.startswith(("Linear", "Conv", "Quantized")) and "Packed" not in cls.__name__:
            yield name, (
                f"a quantized layer ({cls.__module__}.{cls.__name__}): its packed integer weight cannot be "
                "rewritten or trained; transform the float model before quantizing it"
            )


def _explain_plain(gm, model, layers, plain) -> list[tuple[str, str]]:
    """Every module of a registered kind (or quantized layer) not converted, with the reason."""
    out = list(scripted_layers(model)) + list(quantized_layers(model))
    traced_leaves = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for name, module in convertible_modules(model):
        if name in layers or name in dict(out):
            continue
        if name in plain:
            out.append((name, plain[name]))
            continue
        owner = next((leaf for leaf in traced_leaves if name.startswith(leaf + ".")), None)
        if owner is not None:
            module = gm.get_submodule(owner)
            out.append((name, f"inside leaf module {owner!r} ({type(module).__name__}), {leaf_reason(module)}"))
        else:
            out.append((name, "not called in the traced forward pass"))
    return out


def join_path(prefix: str, name: str) -> str:
    """``prefix.name``, or whichever of the two is not empty."""
    return f"{prefix}.{name}" if prefix and name else prefix or name
