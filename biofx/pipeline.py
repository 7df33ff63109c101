"""The pipeline: see → plan → number → build, in place.

::

    model ──see──▶ model graph ──plan──▶ PlannedLayers ──number──▶ ──build──▶ the model, its tree kept
          (torch.fx, torch.export,    (configs,       (index, seed,   each layer: class Bio<Name>,
           else the module tree)       plain + why)    split)         its own graph through the passes

* **see** (:func:`see`): the whole model as an ``fx.GraphModule`` with the layers as
  ``call_module`` leaves: ``torch.fx`` (:func:`biofx.tracing.trace`), else ``torch.export``
  with example inputs (:func:`biofx.capture.export_graph`), else none (the module tree,
  with a note). The graph is for planning, the report and drawings: the model keeps running
  its own Python ``forward``.
* **plan** (:func:`biofx.passes.plan.plan_layers` / :func:`~biofx.passes.plan.plan_modules`):
  the layers to convert, their configs chosen by module path, the layers left plain with
  the reason.
* **number** (:func:`number`): each layer's index (RNG key and LAYER_ADAPTIVE's l among L),
  its seed, and weight splitting, where the output layer is skipped.
* **build** (:func:`build_layer`): the layer's class becomes ``Bio<Name>`` (in place: the
  same object, its parameters, hooks and mode kept) and its own graph
  (:func:`biofx.bio_layer.layer_graph`) goes through the passes (:data:`biofx.passes.PASSES`).
  Every change to the model (state modules, Dale initialization) happens in a pass.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

import torch.fx as fx
import torch.nn as nn

from . import capture as capture_
from .bio_layer import BioLayer, layer_graph
from .config import ConfigMap, Distribution
from .layers import kind_of
from .model import BioMethods
from .passes import run_passes
from .passes.plan import (
    PlannedLayer,
    check_weight_flow,
    convertible_modules,
    plan_layers,
    plan_modules,
    plan_splitting,
    strict_reason,
)
from .tracing import TraceError, trace

log = logging.getLogger("biofx")

__all__ = ["Seen", "LayerPlan", "see", "plan", "number", "build_layer", "convert", "reconvert", "bio_class"]


@dataclasses.dataclass
class Seen:
    """The model as the transform saw it: its graph (``None``: not captured), how, and the
    reasons a capture gives for layers it left plain."""

    gm: Optional[fx.GraphModule]
    capture: str
    reasons: dict = dataclasses.field(default_factory=dict)


def see(model: nn.Module, leaf_modules: tuple, concrete_args: Any, example_inputs: Any, mode: str) -> Seen:
    """Capture the model graph: ``mode`` ``"auto"`` (torch.fx, else torch.export when
    ``example_inputs`` are given, else the module tree), ``"export"`` (torch.export only:
    errors raised) or ``"modules"`` (the module tree, no graph)."""
    if mode == "modules":
        return Seen(None, "module tree (capture='modules')")
    error = None
    if mode == "auto":
        try:
            return Seen(trace(model, leaf_modules, concrete_args), "fx")
        except TraceError as err:
            error = err
    if example_inputs is None and mode == "export":
        example_inputs = capture_.default_inputs(model)
        if example_inputs is None:
            raise ValueError(
                f"capture='export' needs example inputs for {type(model).__name__}: pass "
                "example_inputs={'name': tensor, ...} (or a tuple of positional inputs)"
            )
    if example_inputs is not None:
        try:
            captured = capture_.export_graph(model, example_inputs)
            return Seen(captured.gm, captured.label, captured.plain)
        except capture_.CaptureError as err:
            if mode == "export":
                raise
            error = err
    why = str(error).partition(" Fixes:")[0]
    hint = "" if example_inputs is not None else "; pass example_inputs= (one batch) to capture it with torch.export"
    log.info("biofx: %s; planning from the module tree%s", why, hint)
    return Seen(None, f"module tree ({why}{hint})")


def plan(seen: Seen, model: nn.Module, config_map: ConfigMap, leaf_modules: tuple) -> tuple[list, list]:
    """The layers to convert (in execution order) and ``(name, reason)`` for those left plain."""
    if seen.gm is None:
        layers, plain = plan_modules(model, config_map, leaf_modules)
    else:
        layers, plain = plan_layers(seen.gm, config_map, model)
        plain = [(name, seen.reasons.get(name, reason)) for name, reason in plain]  # a capture knows better
    config_map.check_all_used([name for name, _ in convertible_modules(model)])
    return layers, plain


def number(layers: list, seed: int, outputs: set = frozenset()) -> None:
    """Number the layers once, in order: index, total, seed, LAYER_ADAPTIVE's l and L, and
    weight splitting (not for the layers at ``outputs``, whose outputs are the model's:
    :func:`~biofx.passes.plan.output_layers`)."""
    total = len(layers)
    for index, layer in enumerate(layers):
        layer.index, layer.total = index, total
        cfg = layer.config
        layer.seed = cfg.seed if cfg.seed is not None else seed
        if cfg.fuzzy_lr_distribution is Distribution.LAYER_ADAPTIVE:  # "-1: set by the transform"
            layer.config = cfg.replace(
                fuzzy_lr_layer_index=cfg.fuzzy_lr_layer_index if cfg.fuzzy_lr_layer_index >= 0 else index,
                fuzzy_lr_total_layers=cfg.fuzzy_lr_total_layers if cfg.fuzzy_lr_total_layers > 0 else total,
            )
    plan_splitting(layers, outputs)


def share_states(layers: list, model: nn.Module) -> None:
    """Tied weights: which other modules (not bio layers) hold each layer's weight."""
    bio_weights = {id(layer.module.weight) for layer in layers}
    bio_paths = {layer.path for layer in layers}
    readers: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name in bio_paths:
            continue
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in bio_weights:
                readers.setdefault(id(param), []).append(f"{name}.{param_name}" if name else param_name)
    for layer in layers:
        layer.shared_with = tuple(readers.get(id(layer.module.weight), ()))


def build_layer(layer: PlannedLayer, root: bool = False) -> list:
    """Convert one planned layer in place: its class becomes ``Bio<Name>`` and its own graph
    goes through the passes. Returns the passes' records."""
    module = layer.module
    module.__class__ = bio_class(type(module), root=root, layer=True)
    module.graph = layer_graph()
    layer.name = ""  # targets in the layer's own graph are relative to the layer
    layer.sites = [next(node for node in module.graph.nodes if node.op == "call_module")]
    records = run_passes(module, [layer])
    check_weight_flow(module, [layer])
    module.bio_plan = LayerPlan(layer.config, layer.rule, layer.index, layer.total, layer.seed, layer.split)
    return records


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """A bio layer's plan (``bio.fc.bio_plan``): its config, the ConfigMap rule that chose it,
    its index among the ``total`` bio layers, its seed, and whether its outputs are split. The
    transform keeps them by path, to convert a layer that replaces it (:func:`reconvert`)."""

    config: Any
    rule: str
    index: int
    total: int
    seed: int
    split: bool


def convert(model: nn.Module, layers: list, root_is_layer: bool) -> dict:
    """Build every planned layer (tied weights share one state); returns the pass counts."""
    share_states(layers, model)
    states: dict[int, Any] = {}
    counts: dict[str, int] = {}
    for layer in layers:
        layer.state = states.get(id(layer.module.weight))
        for record in build_layer(layer, root=root_is_layer and layer.module is model):
            counts[record.name] = counts.get(record.name, 0) + len(record.inserted)
        states[id(layer.module.weight)] = layer.state
    return counts


def reconvert(model: nn.Module) -> list[str]:
    """Convert plain layers standing where the transform converted one (see
    :meth:`ReplacedLayers.convert_replaced_layers`)."""
    plans = model.__dict__.get("_biofx_plans", {})
    layers = []
    for path in model.unconverted_new_layers():
        module = model.get_submodule(path)
        if path not in plans or strict_reason(module, kind_of(module)) is not None:
            continue  # a new path, or a layer of a custom class: said at the step, left plain
        was = plans[path]
        layer = PlannedLayer(path, module, kind_of(module), was.config, was.rule, [], path=path)
        layer.index, layer.total, layer.seed, layer.split = was.index, was.total, was.seed, was.split
        layers.append(layer)
    convert(model, layers, root_is_layer=False)
    return [layer.path for layer in layers]


# -- the classes of converted modules ---------------------------------------------------------
class ReplacedLayers:
    """Mixin of a transformed model's root: converting layers put in after the transform."""

    def convert_replaced_layers(self) -> list[str]:
        """Convert the plain layers now standing where the transform converted one (a head
        replaced for fine-tuning, Hugging Face's ``resize_token_embeddings``), with that
        layer's config, rule and index; their state is drawn from their current weights.
        Returns their paths. A layer at a new path needs a new transform of the model."""
        return reconvert(self)


class FollowsResize:
    """Mixin of a transformed Hugging Face model: ``resize_token_embeddings`` replaces an untied
    output layer with a new plain ``nn.Linear`` (Llama); it is converted again with its plan,
    so it keeps training bio. (A tied head keeps its bio layer: its state follows the new
    weight, see :meth:`biofx.BioSynapses.follow_weight`.)"""

    def resize_token_embeddings(self, *args: Any, **kwargs: Any):
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        reconvert(self)
        return embeddings


_CLASSES: dict[tuple, type] = {}


def bio_class(base: type, *, root: bool = False, layer: bool = False) -> type:
    """The cached class of a converted module: ``Bio<Name>(BioLayer, base)`` for a layer,
    ``(BioMethods, base)`` for a transformed model's root (its name kept, so Hugging Face
    ``save_pretrained`` and ``repr`` say the model's own class), both for a model that is one
    layer. Instances pickle as "rebuild from ``base``" (:func:`reduce_converted`)."""
    key = (base, root, layer)
    cls = _CLASSES.get(key)
    if cls is None:
        mixins = ((ReplacedLayers, BioMethods) if root else ()) + ((BioLayer,) if layer else ())
        if root and hasattr(base, "resize_token_embeddings"):  # Hugging Face
            mixins = (FollowsResize, *mixins)
        name = f"Bio{base.__name__}" if layer else base.__name__
        attrs = {
            "__module__": base.__module__ if not layer else BioLayer.__module__,
            "__qualname__": name,
            "__new__": _new_plain,
            "__reduce_ex__": reduce_converted,
            "_biofx_key": key,
        }
        cls = _CLASSES[key] = type(name, (*mixins, base), attrs)
    return cls


def _new_plain(cls, *args: Any, **kwargs: Any) -> nn.Module:
    """Constructing a converted class (``type(bio)(config)``, Hugging Face's
    ``type(bio).from_pretrained(path)``) builds a plain instance of the original class: only
    ``biofx.transform`` makes a model bio, with its plan and state."""
    return cls._biofx_key[0](*args, **kwargs)


def reduce_converted(module: nn.Module, protocol: int = 2) -> tuple:
    """``__reduce_ex__`` of a converted module: rebuilt from its importable class, without the
    generated forward (made again from the graph) and the cached model graph."""
    state = dict(module.__dict__)
    for name in ("_bio_forward", "_biofx_graph"):
        state.pop(name, None)
    return (_rebuild, type(module)._biofx_key, state)


def _rebuild(base: type, root: bool, layer: bool) -> nn.Module:
    """Unpickle a converted module: an empty instance; pickle then restores its state."""
    cls = bio_class(base, root=root, layer=layer)
    return object.__new__(cls)  # not cls(): that builds a plain instance (_new_plain)
