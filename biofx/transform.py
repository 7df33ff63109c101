"""``biofx.transform``: trace, plan, rewrite.

::

    model --trace--> GraphModule --plan--> bio layers --passes--> BioGraphModule
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Optional, Union

import torch
import torch.fx as fx
import torch.nn as nn

from . import hooks
from .config import BioConfig, ConfigMap
from .layers import kind_of
from .model import BioGraphModule, BioMethods, keep_state
from .passes import BioLayer, plan_layers, run_passes
from .passes import tags
from .passes.plan import check_initialized, check_weight_flow, log_plain, plan_splitting
from .tracing import trace

__all__ = ["transform", "TransformReport", "LayerReport"]


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """One converted layer; ``mechanisms`` are the automatic and forward-pass ones."""

    name: str
    kind: str
    weight_shape: tuple
    config_rule: str
    mechanisms: tuple
    state_bytes: int

    @property
    def weights(self) -> int:
        return math.prod(self.weight_shape)


@dataclasses.dataclass(frozen=True)
class TransformReport:
    """What :func:`transform` did: converted layers, layers left plain (with the reason), passes."""

    converted: tuple
    plain: tuple  # (name, reason)
    passes: tuple  # (pass name, nodes inserted)

    def __str__(self) -> str:
        lines = [f"biofx converted {len(self.converted)} layer(s):"]
        for layer in self.converted:
            mech = ", ".join(layer.mechanisms) or "-"
            lines.append(f"  {layer.name or '<root>'} ({layer.kind} {list(layer.weight_shape)}): {mech}")
        if self.plain:
            lines.append(f"left plain {len(self.plain)} layer(s):")
            lines += [f"  {name}: {reason}" for name, reason in self.plain]
        return "\n".join(lines)


def transform(
    model: nn.Module,
    config: Union[BioConfig, ConfigMap, dict, None] = None,
    *,
    leaf_modules: Iterable[type] = (),
    concrete_args: Optional[dict] = None,
    **overrides: Any,
) -> BioGraphModule:
    """Rewrite every Linear/Conv layer of ``model`` into its bio equivalent.

    Args:
        model: the model; its modules and parameters are shared with the result.
        config: a :class:`BioConfig`, a dict of its fields, or a :class:`ConfigMap` choosing a
            config per layer (``None``: defaults).
        leaf_modules: extra module types to keep whole when tracing.
        concrete_args: as for ``torch.fx.symbolic_trace``.
        **overrides: BioConfig fields overriding ``config`` (for a ConfigMap: every config in it).

    Returns:
        A :class:`BioGraphModule` with the model-level bio methods; its ``bio_report`` lists
        what was converted and what was left plain, and why. A model that does not trace
        whole comes back as a ``Bio<Name>`` copy of its containers whose traceable parts are
        BioGraphModules (:mod:`biofx.fallback`), with the same methods and report.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"biofx.transform expects an nn.Module, got {type(model).__name__}")
    leaf_modules = _check_leaf_modules(leaf_modules)
    if isinstance(model, BioMethods):
        raise ValueError("this model is already transformed by biofx; transform the original model instead")
    config_map = _config_map(config, overrides)
    seed = config_map.default.seed
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            f"biofx.transform got a TorchScript module ({getattr(model, 'original_name', type(model).__name__)}); "
            "compiled TorchScript cannot be rewritten. Transform the Python model (before torch.jit.script) "
            "and use torch.compile on the result."
        )
    if kind_of(model) is not None:
        gm, layers, plain = _single_layer(model, config_map)
    else:
        from . import fallback  # imported here: fallback builds on this module

        try:
            gm = trace(model, leaf_modules, concrete_args)
        except fallback.TraceError as err:  # not whole: convert the parts that trace
            return fallback.transform_parts(model, config_map, seed, err, leaf_modules)
        layers, plain = plan_layers(gm, config_map, model)
    for layer in layers:
        layer.seed = layer.config.seed if layer.config.seed is not None else seed
    bio = build(gm, layers, plain, type(model).__name__)
    log_plain(plain)
    hooks.install()
    return bio


def build(gm: fx.GraphModule, layers: list, plain: list, name: str, prefix: str = "") -> BioGraphModule:
    """Run the passes on a traced and planned graph and return the bio model.

    ``prefix``: the module path of ``gm`` in a larger model (state modules name their layers
    by full path).
    """
    results = run_passes(gm, layers)
    check_weight_flow(gm, layers)
    bio = BioGraphModule(gm, gm.graph, f"Bio{name}")
    bio.keep_state(gm)
    initialized = set()
    for layer in layers:
        state = bio.biofx_state[layer.state_key]
        if layer.state_key in initialized:  # a tied layer: the state belongs to the first one
            continue
        initialized.add(layer.state_key)
        state.layer_name = f"{prefix}.{layer.name}" if prefix and layer.name else prefix or layer.name
        if layer.config.apply_dales_principle and not state.weight.is_meta:  # meta: in reset_bio_state()
            state.dale_initialize()
    bio.bio_report = _report(bio, layers, plain, results)
    return bio


def _check_leaf_modules(leaf_modules) -> tuple:
    if isinstance(leaf_modules, type) or not isinstance(leaf_modules, (list, tuple, set, frozenset)):
        raise TypeError(f"leaf_modules must be a list of nn.Module types, got {leaf_modules!r}")
    for leaf in leaf_modules:
        if not (isinstance(leaf, type) and issubclass(leaf, nn.Module)):
            raise TypeError(f"leaf_modules must hold nn.Module subclasses, got {leaf!r}")
    return tuple(leaf_modules)


def _config_map(config, overrides) -> ConfigMap:
    if isinstance(config, ConfigMap):
        return config.replace(**overrides) if overrides else config
    if config is None:
        config = BioConfig()
    elif isinstance(config, dict):
        config = BioConfig.from_dict(config)
    elif not isinstance(config, BioConfig):
        raise TypeError(f"config must be a BioConfig, a dict or a ConfigMap, got {type(config).__name__}")
    return ConfigMap(default=config.replace(**overrides) if overrides else config)


def _single_layer(model: nn.Module, config_map: ConfigMap):
    """A model that is itself one layer: build its functional graph directly."""
    kind = kind_of(model)
    check_initialized("", model)
    config, rule = config_map.select("", model)
    config_map.check_all_used([""])
    graph = fx.Graph()
    x = graph.placeholder("input")
    weight = graph.get_attr("weight")
    bias = graph.get_attr("bias") if model.bias is not None else None
    call = kind.emit(graph, x, weight, bias, model)
    graph.output(call)
    gm = fx.GraphModule(model, graph, type(model).__name__)
    keep_state(model, gm)
    if config is None or kind.unsupported(model) is not None:
        return gm, [], [("<root>", kind.unsupported(model) or f"left plain by ConfigMap ({rule})")]
    for node in graph.nodes:
        if node.op in ("get_attr", "call_function"):
            tags.tag(node, tags.LAYER, "", "inline_layers", kind=kind.name)
    layer = BioLayer("", model, kind, config, rule, [call], weight_nodes={call: weight})
    plan_splitting([layer])
    return gm, [layer], []


def _report(bio: BioGraphModule, layers: list, plain: list, results: list) -> TransformReport:
    converted = []
    for layer in layers:
        state = bio.biofx_state[layer.state_key]
        cfg = layer.config
        mechanisms = list(cfg.automatic)
        if layer.split:
            mechanisms.append(f"weight_split (Γ={cfg.weight_splitting_Gamma})")
        if cfg.apply_dales_principle:
            mechanisms.append("dale")
        if cfg.tracks_activity:
            mechanisms.append("activity")
        if cfg.rejuvenate_every:
            mechanisms.append(f"rejuvenate (every {cfg.rejuvenate_every} steps)")
        converted.append(
            LayerReport(
                layer.name,
                layer.kind.name,
                tuple(layer.module.weight.shape),
                layer.rule,
                tuple(mechanisms),
                state.state_bytes(),
            )
        )
    passes = tuple((r.name, len(r.inserted)) for r in results)
    return TransformReport(tuple(converted), tuple(plain), passes)
