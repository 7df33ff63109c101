"""Plan: find every convertible layer call and choose its config.

Not a graph rewrite: it walks the traced graph in execution order, finds the
``call_module`` nodes of registered layer kinds, selects each layer's config with the
:class:`~biofx.ConfigMap` (by its full module path) and lists every layer of a registered
kind that is *not* converted, with the reason. Numbering (index, seed, weight splitting)
is the pipeline's next step, once for the whole model (:func:`biofx.pipeline.number`).

Which stage writes which :class:`BioLayer` field: the plan all but the ones below;
``number`` ``index``, ``total``, ``seed``, ``split`` (and LAYER_ADAPTIVE's l and L in
``config``); the passes ``sites``, ``weight_nodes`` (inline_layers, then each chain) and
``state_key`` (attach_state).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import parametrize

from ..config import BioConfig, ConfigMap
from ..layers import LAYER_KINDS, LayerKind, kind_of
from ..tracing import LEAF_REASONS, leaf_reason
from . import tags


@dataclasses.dataclass
class BioLayer:
    """One converted layer (a module; it may be called at several sites)."""

    name: str
    module: nn.Module
    kind: LayerKind
    config: BioConfig
    rule: str
    sites: list  # call_module nodes, replaced by inline_layers_pass with functional calls
    path: str = ""  # the full module path in the model (a part's layers: prefix + name)
    index: int = 0
    total: int = 1
    seed: int = 0
    split: bool = False
    state_key: str = ""
    weight_nodes: dict = dataclasses.field(default_factory=dict)  # site -> node feeding the weight


def skip_split_marked(module: nn.Module) -> bool:
    """Whether ``BioConverter.mark_skip_weight_splitting`` (or the reference's token) marks it."""
    return bool(getattr(module, "last_module_token", False) or getattr(module, "_biofx_skip_split", False))


def plan_layers(
    gm: fx.GraphModule, config_map: ConfigMap, model: nn.Module, prefix: str = ""
) -> tuple[list[BioLayer], list[tuple[str, str]]]:
    """Return the bio layers in execution order and ``(name, reason)`` for layers left plain.

    ``model`` is the traced model, for the layers the graph does not reach; ``prefix`` its
    path in a larger model (configs are selected by full path; reasons name full paths).
    Whether every ConfigMap entry matched a layer is checked by the caller, for the whole model.
    """
    layers: dict[str, BioLayer] = {}
    plain: dict[str, str] = {}
    bypasses = _bypasses(gm, prefix)
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
        path = join_path(prefix, node.target)
        check_initialized(path, module)
        config, rule = config_map.select(path, module)
        if config is None:
            plain[node.target] = f"left plain by ConfigMap ({rule})"
        elif len(node.args) != 1 or node.kwargs:
            plain[node.target] = "called with arguments other than one input tensor"
        elif parametrize.is_parametrized(module, "weight"):
            plain[node.target] = "its weight is computed by a parametrization (e.g. weight_norm), not stored"
        elif not isinstance(getattr(module, "weight", None), nn.Parameter):
            plain[node.target] = "its weight is not an nn.Parameter"
        elif (why := kind.unsupported(module)) is not None:
            plain[node.target] = why
        elif node.target in bypasses:
            plain[node.target] = bypasses[node.target]
        else:
            layers[node.target] = BioLayer(node.target, module, kind, config, rule, [node], path=path)
    return list(layers.values()), _explain_plain(gm, model, layers, plain, prefix)


def plan_root_layer(gm: fx.GraphModule, config_map: ConfigMap, model: nn.Module, prefix: str = ""):
    """The plan of a model that is itself one layer: ``gm`` calls it once (target ``""``,
    see :func:`biofx.pipeline.root_layer_graph`). Returns ``(layers, plain)`` as :func:`plan_layers`."""
    kind = kind_of(model)
    check_initialized(prefix, model)
    config, rule = config_map.select(prefix, model)
    if config is None or kind.unsupported(model) is not None:
        return [], [("<root>", kind.unsupported(model) or f"left plain by ConfigMap ({rule})")]
    site = next(node for node in gm.graph.nodes if node.op == "call_module")
    return [BioLayer("", model, kind, config, rule, [site], path=prefix)], []


def _bypasses(gm: fx.GraphModule, prefix: str) -> dict:
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
                        f"also used inside leaf module {join_path(prefix, node.target)!r} "
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


def last_called(layers: list[BioLayer]) -> BioLayer:
    """The layer whose last call comes last in the graph (the layers of one graph)."""
    position = {node: i for i, node in enumerate(layers[0].sites[0].graph.nodes)}
    return max(layers, key=lambda l: max(position[site] for site in l.sites))


def plan_splitting(layers: list[BioLayer], last=None) -> None:
    """Decide ``split`` for each layer (``last``, the model's last bio layer, is skipped);
    Γ must divide a split layer's output count."""
    for layer in layers:
        if not layer.config.splits or layer is last or skip_split_marked(layer.module):
            continue
        gamma = layer.config.weight_splitting_Gamma
        channels = layer.kind.out_features(layer.module)
        if channels % gamma:
            fix = (
                f"leave this layer unsplit with BioConverter.mark_skip_weight_splitting(model.{layer.path}) "
                "or a ConfigMap entry"
                if layer.path
                else "turn splitting off with weight_splitting_Gamma=0"
            )
            raise ValueError(
                f"weight_splitting_Gamma ({gamma}) must evenly divide the number of features ({channels}) "
                f"of layer {layer.path or '<root>'!r} ({layer.kind.name}, {channels} outputs). "
                f"Choose a Γ that divides {channels}, or {fix}."
            )
        layer.split = True


def convertible_modules(model: nn.Module):
    """``(name, module)`` for every module of a registered layer kind."""
    for name, module in model.named_modules():
        if kind_of(module) is not None:
            yield name, module


def scripted_layers(model: nn.Module, prefix: str = ""):
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
                f"inside TorchScript module {join_path(prefix, owner)!r}: compiled code cannot be rewritten; "
                "transform the Python module before torch.jit.script"
            )


def _explain_plain(gm, model, layers, plain, prefix) -> list[tuple[str, str]]:
    """Every module of a registered kind that was not converted, with the reason."""
    out = list(scripted_layers(model, prefix))
    traced_leaves = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for name, module in convertible_modules(model):
        if name in layers:
            continue
        if name in plain:
            out.append((name, plain[name]))
            continue
        owner = next((leaf for leaf in traced_leaves if name.startswith(leaf + ".")), None)
        if owner is not None:
            why = gm.meta.get(LEAF_REASONS, {}).get(owner) or leaf_reason(gm.get_submodule(owner))
            module = gm.get_submodule(owner)
            out.append((name, f"inside leaf module {join_path(prefix, owner)!r} ({type(module).__name__}), {why}"))
        else:
            out.append((name, "not called in the traced forward pass"))
    return out


def join_path(prefix: str, name: str) -> str:
    """``prefix.name``, or whichever of the two is not empty."""
    return f"{prefix}.{name}" if prefix and name else prefix or name
