"""``biofx.transform``: trace, plan, rewrite.

::

    model --trace--> GraphModule --plan--> bio layers --passes--> BioGraphModule
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Iterable, Optional, Union

import torch
import torch.fx as fx
import torch.nn as nn

from . import capture as capture_
from . import hooks
from .config import BioConfig, ConfigMap
from .layers import kind_of
from .model import BioGraphModule, BioMethods, keep_state
from .passes import BioLayer, plan_layers, run_passes
from .passes import tags
from .passes.plan import check_initialized, check_weight_flow, log_plain, plan_splitting

log = logging.getLogger("biofx")
from .tracing import trace

__all__ = ["transform", "TransformReport", "LayerReport"]

#: The choices of ``transform(capture=...)``.
CAPTURES = ("auto", "export", "parts")


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
    capture: str = "fx"  # how the graph was captured: "fx", "export (inputs: ...)", "fallback (N parts)"

    def __str__(self) -> str:
        lines = [f"biofx converted {len(self.converted)} layer(s), captured by {self.capture}:"]
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
    example_inputs: Any = None,
    capture: str = "auto",
    **overrides: Any,
) -> BioGraphModule:
    """Rewrite every Linear/Conv layer of ``model`` into its bio equivalent.

    Args:
        model: the model; its modules and parameters are shared with the result.
        config: a :class:`BioConfig`, a dict of its fields, or a :class:`ConfigMap` choosing a
            config per layer (``None``: defaults).
        leaf_modules: extra module types to keep whole when tracing.
        concrete_args: as for ``torch.fx.symbolic_trace``.
        example_inputs: inputs for ``torch.export`` when the model does not trace with
            ``torch.fx`` (a dict of keyword arguments, a tuple of positional ones, or a
            tensor); Hugging Face models have defaults (:func:`biofx.capture.default_inputs`).
            The exported graph takes exactly these inputs, with any batch size and length.
        capture: ``"auto"`` (``torch.fx``, else ``torch.export`` when ``example_inputs`` are
            given, else the fallback in parts), ``"export"`` (``torch.export`` only, with the
            Hugging Face default inputs when none are given; errors raised) or ``"parts"``
            (``torch.fx``, else the fallback: eager glue that takes any inputs).
        **overrides: BioConfig fields overriding ``config`` (for a ConfigMap: every config in it).

    Returns:
        A :class:`BioGraphModule` with the model-level bio methods; its ``bio_report`` lists
        what was converted and what was left plain, and why, and how the graph was captured
        (:mod:`biofx.capture`). A model captured by neither comes back as a ``Bio<Name>``
        copy of its containers whose traceable parts are BioGraphModules
        (:mod:`biofx.fallback`), with the same methods and report.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"biofx.transform expects an nn.Module, got {type(model).__name__}")
    leaf_modules = _check_leaf_modules(leaf_modules)
    if capture not in CAPTURES:
        raise ValueError(f"capture must be one of {', '.join(map(repr, CAPTURES))}, got {capture!r}")
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
    label = "fx"
    if kind_of(model) is not None:
        gm, layers, plain = _single_layer(model, config_map)
    else:
        from . import fallback  # imported here: fallback builds on this module

        error, extra = None, {}
        if capture != "export":
            try:
                gm = trace(model, leaf_modules, concrete_args)
            except fallback.TraceError as err:  # not whole: export it, else convert the parts that trace
                error = err
        if capture == "export" or error is not None:
            captured = _export(model, example_inputs, capture)
            if captured is None:
                return fallback.transform_parts(model, config_map, seed, error, leaf_modules)
            gm, extra, label = captured.gm, captured.plain, captured.label
        layers, plain = plan_layers(gm, config_map, model)
        plain = [(name, extra.get(name, reason)) for name, reason in plain]
    for layer in layers:
        layer.seed = layer.config.seed if layer.config.seed is not None else seed
    bio = build(gm, layers, plain, type(model).__name__, capture=label)
    log_plain(plain)
    hooks.install()
    return bio


def build(
    gm: fx.GraphModule, layers: list, plain: list, name: str, prefix: str = "", capture: str = "fx"
) -> BioGraphModule:
    """Run the passes on a traced and planned graph and return the bio model.

    ``prefix``: the module path of ``gm`` in a larger model (state modules name their layers
    by full path); ``capture``: how ``gm`` was captured, for the report.
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
    bio.bio_report = _report(bio, layers, plain, results, capture)
    return bio


def _export(model: nn.Module, example_inputs: Any, mode: str):
    """The model captured whole by ``torch.export`` (a :class:`~biofx.capture.Capture`), or
    ``None`` for the fallback (``mode="export"``: raise instead)."""
    if mode == "parts":
        return None
    if example_inputs is None and mode == "auto":
        # An exported graph takes exactly its example's inputs: without the user's own batch
        # (a tokenizer's token_type_ids, labels, ...) the parts, which take any inputs, are safer.
        log.info("biofx: pass example_inputs= (one batch) to capture %s whole with torch.export; "
                 "converting in parts", type(model).__name__)
        return None
    if example_inputs is None:
        example_inputs = capture_.default_inputs(model)
    if example_inputs is None:
        if mode == "export":
            raise ValueError(
                f"capture='export' needs example inputs for {type(model).__name__}: pass "
                "example_inputs={'name': tensor, ...} (or a tuple of positional inputs)"
            )
        log.info("biofx: no example inputs for torch.export (pass example_inputs=); converting in parts")
        return None
    try:
        return capture_.export_graph(model, example_inputs)
    except capture_.CaptureError as err:
        if mode == "export":
            raise
        log.warning("biofx: %s; converting in parts instead", err)
        return None


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


def _report(bio: BioGraphModule, layers: list, plain: list, results: list, capture: str) -> TransformReport:
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
    return TransformReport(tuple(converted), tuple(plain), passes, capture)
