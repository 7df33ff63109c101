"""Plan: find every convertible layer call and choose its config.

Not a graph rewrite: it walks the traced graph in execution order, finds the
``call_module`` nodes of registered layer kinds, selects each layer's config with the
:class:`~biofx.ConfigMap`, decides weight splitting (the last bio layer is skipped when
there are several; Γ must divide the output count) and lists every layer of a registered
kind that is *not* converted, with the reason.
"""

from __future__ import annotations

import dataclasses
import torch.fx as fx
import torch.nn as nn

from ..config import BioConfig, ConfigMap
from ..layers import LayerKind, kind_of
from ..tracing import LEAF_REASONS


@dataclasses.dataclass
class BioLayer:
    """One converted layer (a module; it may be called at several sites)."""

    name: str
    module: nn.Module
    kind: LayerKind
    config: BioConfig
    rule: str
    sites: list  # call_module nodes, replaced by inline_layers_pass with functional calls
    index: int = 0
    seed: int = 0
    split: bool = False
    state_key: str = ""
    weight_nodes: dict = dataclasses.field(default_factory=dict)  # site -> node feeding the weight


def skip_split_marked(module: nn.Module) -> bool:
    """Whether ``BioConverter.mark_skip_weight_splitting`` (or the reference's token) marks it."""
    return bool(getattr(module, "last_module_token", False) or getattr(module, "_biofx_skip_split", False))


def plan_layers(
    gm: fx.GraphModule, config_map: ConfigMap, model: nn.Module
) -> tuple[list[BioLayer], list[tuple[str, str]]]:
    """Return the bio layers in execution order and ``(name, reason)`` for layers left plain.

    ``model`` is the traced model, for the layers the graph does not reach.
    """
    layers: dict[str, BioLayer] = {}
    plain: dict[str, str] = {}
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
        config, rule = config_map.select(node.target, module)
        if config is None:
            plain[node.target] = f"left plain by ConfigMap ({rule})"
        elif len(node.args) != 1 or node.kwargs:
            plain[node.target] = "called with arguments other than one input tensor"
        elif not isinstance(getattr(module, "weight", None), nn.Parameter):
            plain[node.target] = "its weight is not an nn.Parameter"
        else:
            layers[node.target] = BioLayer(node.target, module, kind, config, rule, [node])
    ordered = list(layers.values())
    for index, layer in enumerate(ordered):
        layer.index = index
    config_map.check_all_used([n for n, _ in convertible_modules(model)])
    plan_splitting(ordered)
    return ordered, _explain_plain(gm, model, layers, plain)


def plan_splitting(layers: list[BioLayer]) -> None:
    last = None
    if len(layers) > 1:  # the layer whose last call comes last in the graph
        position = {node: i for i, node in enumerate(layers[0].sites[0].graph.nodes)}
        last = max(layers, key=lambda l: max(position[site] for site in l.sites))
    for layer in layers:
        if not layer.config.splits or layer is last or skip_split_marked(layer.module):
            continue
        gamma = layer.config.weight_splitting_Gamma
        channels = layer.kind.out_features(layer.module)
        if channels % gamma:
            fix = (
                f"leave this layer unsplit with BioConverter.mark_skip_weight_splitting(model.{layer.name}) "
                "or a ConfigMap entry"
                if layer.name
                else "turn splitting off with weight_splitting_Gamma=0"
            )
            raise ValueError(
                f"weight_splitting_Gamma ({gamma}) must evenly divide the number of features ({channels}) "
                f"of layer {layer.name or '<root>'!r} ({layer.kind.name}, {channels} outputs). "
                f"Choose a Γ that divides {channels}, or {fix}."
            )
        layer.split = True


def convertible_modules(model: nn.Module):
    """``(name, module)`` for every module of a registered layer kind."""
    for name, module in model.named_modules():
        if kind_of(module) is not None:
            yield name, module


def _explain_plain(gm, model, layers, plain) -> list[tuple[str, str]]:
    """Every module of a registered kind that was not converted, with the reason."""
    out = []
    traced_leaves = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for name, module in convertible_modules(model):
        if name in layers:
            continue
        if name in plain:
            out.append((name, plain[name]))
            continue
        owner = next((leaf for leaf in traced_leaves if name.startswith(leaf + ".")), None)
        if owner is not None:
            why = gm.meta.get(LEAF_REASONS, {}).get(owner, "not traced")
            out.append((name, f"inside leaf module {owner!r} ({type(gm.get_submodule(owner)).__name__}), {why}"))
        else:
            out.append((name, "not called in the traced forward pass"))
    return out
