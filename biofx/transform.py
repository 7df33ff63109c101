"""``biofx.transform``: the entry point.

It checks the arguments and runs the pipeline (:mod:`biofx.pipeline`): see the model whole
(``torch.fx``, else ``torch.export`` with example inputs, else the module tree), plan, number,
and convert each layer in place. The model keeps its tree: the same containers (classes,
methods, hooks, modes, Python ``forward``), each converted layer a ``Bio<Name>`` instance of
its own class, and the root gains the model-level bio methods (:class:`~biofx.model.BioMethods`).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Union

import torch
import torch.nn as nn

from . import runtime
from ._warn import warn_user
from .bio_layer import BioLayer
from .config import BioConfig, ConfigMap
from .layers import kind_of
from .model import BioMethods
from .passes import PASSES
from .passes.plan import output_layers
from .pipeline import Seen, bio_class, convert, number, plan, see
from .report import LayerReport, TransformReport, log_plain

log = logging.getLogger("biofx")

# LayerReport and TransformReport live in biofx.report; ``biofx.transform.LayerReport`` is a
# documented path, so they are re-exported here.
__all__ = ["transform", "TransformReport", "LayerReport"]

#: The choices of ``transform(capture=...)``.
CAPTURES = ("auto", "export", "modules")


def transform(
    model: nn.Module,
    config: Union[BioConfig, ConfigMap, dict, None] = None,
    *,
    leaf_modules: Iterable[type] = (),
    concrete_args: Any = None,
    example_inputs: Any = None,
    capture: str = "auto",
    **overrides: Any,
) -> nn.Module:
    """Convert every Linear/Conv layer of ``model`` into its bio equivalent, in place.

    Like torchao's ``quantize_`` and PEFT's ``get_peft_model``, the model itself is changed
    and returned: the same object with the same module tree. Each converted layer stays the
    same object (its parameters, hooks and mode) with the class ``Bio<Name>``, a subclass of
    its own, whose forward runs its rewritten fx graph; the root gains the model-level bio
    methods. To keep the original, transform a copy: ``biofx.transform(copy.deepcopy(model))``.

    Args:
        model: the model (not yet transformed).
        config: a :class:`BioConfig`, a dict of its fields, or a :class:`ConfigMap` choosing a
            config per layer (``None``: defaults).
        leaf_modules: extra module types to keep whole when tracing (their layers stay plain).
        concrete_args: as for ``torch.fx.symbolic_trace``.
        example_inputs: inputs for ``torch.export`` when the model does not trace with
            ``torch.fx`` (a dict of keyword arguments, a tuple of positional ones, or a
            tensor): the model graph is then captured for the plan, the report and drawings.
        capture: ``"auto"`` (``torch.fx``, else ``torch.export`` when ``example_inputs`` are
            given, else the module tree), ``"export"`` (``torch.export`` only, with the
            Hugging Face default inputs when none are given; errors raised) or ``"modules"``
            (the module tree, registration order standing for execution order).
        **overrides: BioConfig fields overriding ``config`` (for a ConfigMap: every config in it).

    Returns:
        ``model``, with ``bio_report`` (what was converted, what was left plain and why, how
        the model was seen) and ``bio_graph`` (the model graph with the bio layers as
        ``call_module`` leaves).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"biofx.transform expects an nn.Module, got {type(model).__name__}")
    leaf_modules = _check_leaf_modules(leaf_modules)
    if capture not in CAPTURES:
        raise ValueError(f"capture must be one of {', '.join(map(repr, CAPTURES))}, got {capture!r}")
    if isinstance(model, BioMethods) or any(isinstance(m, BioLayer) for m in model.modules()):
        raise ValueError(
            f"this {type(model).__name__} is already transformed by biofx (transform works in place); "
            "transform the original model, or a copy of it made before the transform"
        )
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            f"biofx.transform got a TorchScript module ({getattr(model, 'original_name', type(model).__name__)}); "
            "compiled TorchScript cannot be rewritten. Transform the Python model (before torch.jit.script) "
            "and use torch.compile on the result."
        )
    config_map = _config_map(config, overrides)
    seed = config_map.default.seed
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    one_layer = kind_of(model) is not None
    seen = Seen(None, "one layer") if one_layer else see(model, leaf_modules, concrete_args, example_inputs, capture)
    layers, plain = plan(seen, model, config_map, leaf_modules)
    number(layers, seed, set() if one_layer else output_layers(seen.gm, model))  # a one-layer model is split
    counts = convert(model, layers, root_is_layer=one_layer)
    if not isinstance(model, BioMethods):  # the root is not a converted layer
        model.__class__ = bio_class(type(model), root=True)
    model.__dict__.update(
        _biofx_graph=seen.gm,
        _biofx_capture=seen.capture,
        _biofx_plain=tuple(plain),
        _biofx_passes=tuple((p.__name__, counts.get(p.__name__, 0)) for p in PASSES),
        _biofx_plans={layer.path: layer.module.bio_plan for layer in layers},
    )
    log_plain(plain)
    if not layers:
        reasons = "; ".join(f"{name or '<root>'}: {why}" for name, why in plain) or "it has no Linear/Conv layer"
        warn_user(f"biofx converted 0 layers of {type(model).__name__}: {reasons}")
    runtime.install()
    runtime.register_model(model)
    return model


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
