"""The pipeline: trace → plan → number → build, for a whole model or for its parts.

::

    model ──trace──▶ GraphModule ──plan──▶ BioLayers ──number──▶ ──build (passes)──▶ BioGraphModule
           (torch.fx, torch.export,         per graph     once, for the
            or a one-layer graph)                          whole model

:func:`biofx.transform` converts a model as one :class:`Graph`; the fallback
(:mod:`biofx.fallback`) as several, one per part that traces, each with its module path as
``prefix``. Both call :func:`convert`, so the rules are the same:

* **plan** (:func:`biofx.passes.plan.plan_layers`): the layers of each graph, their configs
  chosen by full module path, and the layers left plain with the reason;
* **number** (:func:`number`), once over all graphs: each layer's index (RNG key and
  LAYER_ADAPTIVE's l among L), its seed, and weight splitting, where the model's last bio
  layer is skipped (the last graph's last-called layer);
* **build** (:func:`build`): the passes (:data:`biofx.passes.PASSES`), the weight-flow check,
  and the :class:`~biofx.BioGraphModule` with its report. Build only assembles: every change
  to the model (state modules, Dale initialization) happens in a pass.

A model that is itself one layer becomes a graph that calls it once
(:func:`root_layer_graph`) and goes through the same ``inline_layers`` pass as every layer.
"""

from __future__ import annotations

import dataclasses

import torch.fx as fx
import torch.nn as nn

from .config import ConfigMap, Distribution
from .layers import kind_of
from .model import BioGraphModule, keep_state
from .passes import run_passes
from .passes.inline_layers import inline_call
from .passes.plan import (
    check_weight_flow,
    convertible_modules,
    last_called,
    plan_layers,
    plan_root_layer,
    plan_splitting,
)
from .report import TransformReport, layer_report

__all__ = ["Graph", "convert", "plan", "number", "build", "root_layer_graph"]


@dataclasses.dataclass
class Graph:
    """A graph to convert: the whole model (``prefix=""``) or the part at ``prefix``.

    ``module`` is the traced module; ``capture`` how ``gm`` was captured (for the report);
    ``reasons`` replace the plan's reason for layers left plain (a capture knows better).
    The plan fills ``layers`` and ``plain``.
    """

    module: nn.Module
    gm: fx.GraphModule
    prefix: str = ""
    capture: str = "fx"
    reasons: dict = dataclasses.field(default_factory=dict)
    layers: list = dataclasses.field(default_factory=list)
    plain: list = dataclasses.field(default_factory=list)


def root_layer_graph(layer: nn.Module) -> fx.GraphModule:
    """The graph of a model that is one layer: ``input → layer(input) → output``.

    The call's target is ``""`` (the graph module itself holds the layer's parameters and
    attributes); the ``inline_layers`` pass replaces it with the functional call.
    """
    graph = fx.Graph()
    x = graph.placeholder("input")
    output = graph.output(x)
    gm = fx.GraphModule(layer, graph, type(layer).__name__)
    keep_state(layer, gm)
    with gm.graph.inserting_before(output):
        call = gm.graph.call_module("", (x,))
    output.args = (call,)
    return gm


def plan(graph: Graph, config_map: ConfigMap) -> None:
    """The graph's layers and the ones left plain (see :mod:`biofx.passes.plan`)."""
    if kind_of(graph.module) is not None:  # a one-layer graph (root_layer_graph)
        graph.layers, graph.plain = plan_root_layer(graph.gm, config_map, graph.module, graph.prefix)
        if not graph.layers:  # left plain: the call becomes the plain functional one
            site = next(node for node in graph.gm.graph.nodes if node.op == "call_module")
            inline_call(graph.gm, site, "", graph.module, kind_of(graph.module))
    else:
        graph.layers, plain = plan_layers(graph.gm, config_map, graph.module, graph.prefix)
        graph.plain = [(name, graph.reasons.get(name, reason)) for name, reason in plain]


def number(graphs: list, seed: int) -> None:
    """Number the layers of all graphs once, in order: index, total, seed, LAYER_ADAPTIVE's
    l and L, and weight splitting (the model's last bio layer is skipped when there are several)."""
    layers = [layer for graph in graphs for layer in graph.layers]
    total = len(layers)
    last = last_called([g for g in graphs if g.layers][-1].layers) if total > 1 else None
    for index, layer in enumerate(layers):
        layer.index, layer.total = index, total
        cfg = layer.config
        layer.seed = cfg.seed if cfg.seed is not None else seed
        if cfg.fuzzy_lr_distribution is Distribution.LAYER_ADAPTIVE:  # "-1: set by the transform"
            layer.config = cfg.replace(
                fuzzy_lr_layer_index=cfg.fuzzy_lr_layer_index if cfg.fuzzy_lr_layer_index >= 0 else index,
                fuzzy_lr_total_layers=cfg.fuzzy_lr_total_layers if cfg.fuzzy_lr_total_layers > 0 else total,
            )
    plan_splitting(layers, last)


def build(graph: Graph) -> BioGraphModule:
    """Run the passes on a planned and numbered graph; return the bio model with its report."""
    gm, layers = graph.gm, graph.layers
    records = run_passes(gm, layers)
    check_weight_flow(gm, layers)
    bio = BioGraphModule(gm, gm.graph, f"Bio{type(graph.module).__name__}")
    bio.keep_state(gm)
    converted = tuple(layer_report(layer, bio.biofx_state[layer.state_key]) for layer in layers)
    passes = tuple((record.name, len(record.inserted)) for record in records)
    bio.bio_report = TransformReport(converted, tuple(graph.plain), passes, graph.capture)
    return bio


def convert(graphs: list, config_map: ConfigMap, model: nn.Module, seed: int) -> list[BioGraphModule]:
    """Plan every graph, check that every ConfigMap entry of ``model`` matched a layer, number
    once, and build each graph into a bio model (in the order given)."""
    for graph in graphs:
        plan(graph, config_map)
    config_map.check_all_used([name for name, _ in convertible_modules(model)])
    number(graphs, seed)
    return [build(graph) for graph in graphs]
