"""``biofx.transform``: the entry point.

It checks the arguments, chooses the capture (``torch.fx``, else ``torch.export``, else the
fallback in parts: :mod:`biofx.fallback`; a model that is one layer: a one-layer graph) and
hands the graph to the pipeline (:func:`biofx.pipeline.convert`: plan → number → build).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Union

import torch
import torch.nn as nn

from . import capture as capture_
from . import fallback, runtime
from .config import BioConfig, ConfigMap
from .layers import kind_of
from .model import BioGraphModule, BioMethods
from .pipeline import Graph, convert, root_layer_graph
from .report import LayerReport, TransformReport, log_plain
from .tracing import TraceError, trace

log = logging.getLogger("biofx")

# LayerReport and TransformReport live in biofx.report; ``biofx.transform.LayerReport`` is a
# documented path (and old pickles of bio models name it), so they are re-exported here.
__all__ = ["transform", "TransformReport", "LayerReport"]

#: The choices of ``transform(capture=...)``.
CAPTURES = ("auto", "export", "parts")


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
    if kind_of(model) is not None:
        graph = Graph(model, root_layer_graph(model))
    else:
        error = None
        if capture != "export":
            try:
                gm = trace(model, leaf_modules, concrete_args)
            except TraceError as err:  # not whole: export it, else convert the parts that trace
                error = err
        if capture == "export" or error is not None:
            captured = _export(model, example_inputs, capture)
            if captured is None:
                return fallback.transform_parts(model, config_map, seed, error, leaf_modules)
            graph = Graph(model, captured.gm, capture=captured.label, reasons=captured.plain)
        else:
            graph = Graph(model, gm)
    (bio,) = convert([graph], config_map, model, seed)
    log_plain(graph.plain)
    runtime.install()
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
