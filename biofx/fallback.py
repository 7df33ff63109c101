"""Tracing fallback: convert the parts of a model that trace when the whole model does not.

Real models often do not trace whole with ``torch.fx`` (data-dependent control flow, Hugging
Face's ``*args/**kwargs`` decorators). :func:`biofx.transform` then calls
:func:`transform_parts`, which converts the largest submodules that do trace:

* **Search** (depth first, in registration order). A submodule without any Linear/Conv is
  left as it is; a layer (any registered kind: ``nn.Linear``, ``nn.Conv*d``, Hugging Face's
  ``Conv1D``) is converted on its own, exactly as ``transform(layer)`` would; a container
  without ``forward`` (``nn.ModuleList``) is searched; any other submodule is traced: if it
  traces it becomes one *part*, else it runs eagerly and its children are searched.
  Modules the tracer keeps whole (a ``leaf_modules`` type, ``nn.MultiheadAttention`` and
  other torch.nn modules, TorchScript modules) are kept whole and eager, as in a whole-model
  trace, and their layers are reported plain with the reason: converting ``out_proj`` on its
  own would not help, since ``nn.MultiheadAttention`` reads its weight directly.
* **Parts.** Each part is rewritten by the same plan and passes as a whole model and becomes
  a :class:`~biofx.BioGraphModule` at its place. Layer indices (RNG keys, LAYER_ADAPTIVE's
  l and L) count over the whole model, so no two layers share a key.
* **Weight splitting.** "The last bio layer is skipped" refers to the whole model's last
  layer. The root does not trace, so execution order across parts is unknown; biofx takes
  the last layer in search order (registration order, which is execution order in
  ``nn.Sequential``, Hugging Face and torchvision models; within a part, execution order).
  Mark another layer with ``BioConverter.mark_skip_weight_splitting`` if that is wrong.
* **Root.** The containers on the path from the root to each part are shallow-copied and the
  part is put in the copy, so ``model`` stays plain and shares its parameters and leaf modules
  with the result, as after a whole-model trace. The copied root's class becomes
  ``Bio<Name>``, a cached subclass of :class:`BioRoot` and the model's class: it has the
  model-level methods (:class:`~biofx.model.BioMethods` finds every
  :class:`~biofx.BioSynapses` through ``modules()``), a merged :class:`FallbackReport` as
  ``bio_report``, and pickles as "rebuild ``Bio<Name>`` from ``<Name>``", so
  ``torch.save(model)`` / ``torch.load`` (also in a fresh process) and ``copy.deepcopy`` work
  whenever the original class is importable.

Caveats. Parts are traced with every ``forward`` argument symbolic: a branch
``if arg is None`` takes the not-None side, so calling that part with ``None`` there fails at
the call (pass its type in ``leaf_modules`` to keep it eager). ``concrete_args`` apply to the
root only. A layer converted on its own is bio where its ``forward`` is called; code that reads
its ``.weight`` directly bypasses the bio nodes.

``biofx.transform`` tries :mod:`biofx.capture` (the whole model with ``torch.export``)
before this fallback; ``capture="parts"`` comes here directly.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Iterable, Optional

import torch.fx as fx
import torch.nn as nn

from . import hooks
from .config import ConfigMap, Distribution
from .layers import kind_of
from .model import BioGraphModule, BioMethods
from .passes import plan_layers
from .passes.plan import convertible_modules, log_plain, plan_splitting, scripted_layers
from .passes.plan import join_path as _join
from .tracing import BioTracer, TraceError, leaf_reason, trace
from .transform import TransformReport, _single_layer, build

log = logging.getLogger("biofx")

__all__ = ["transform_parts", "BioRoot", "FallbackReport", "bio_class"]


@dataclasses.dataclass(frozen=True)
class FallbackReport(TransformReport):
    """A :class:`~biofx.TransformReport` for a model converted in parts.

    ``parts``: paths of the converted parts (each a BioGraphModule); ``eager``:
    ``(path, reason)`` for the modules that did not trace and run eagerly around them
    (``""`` is the root).
    """

    parts: tuple = ()
    eager: tuple = ()

    def __str__(self) -> str:
        lines = [super().__str__(), f"traced in {len(self.parts)} part(s): {', '.join(self.parts)}"]
        if self.eager:
            lines.append(f"eager (not traceable) {len(self.eager)} module(s):")
            lines += [f"  {path or '<root>'}: {reason}" for path, reason in self.eager]
        return "\n".join(lines)


class BioRoot(BioMethods):
    """Model-level bio methods for a model whose parts were converted (see module docstring).

    ``Bio<Name>`` classes (:func:`bio_class`) put this mixin before the model's own class.
    """

    _biofx_base: type

    def __reduce_ex__(self, protocol: int):
        # pickle/deepcopy by the importable original class, not by the generated one
        return (_rebuild_root, (self._biofx_base,), self.__dict__)


_BIO_CLASSES: dict[type, type] = {}


def bio_class(base: type) -> type:
    """The cached ``Bio<Name>(BioRoot, base)`` class."""
    cls = _BIO_CLASSES.get(base)
    if cls is None:
        name = f"Bio{base.__name__}"
        attrs = {"__module__": __name__, "__qualname__": name, "_biofx_base": base}
        cls = _BIO_CLASSES[base] = type(name, (BioRoot, base), attrs)
    return cls


def _rebuild_root(base: type) -> BioRoot:
    """Unpickle a converted root: an empty ``Bio<Name>``; pickle then restores its ``__dict__``."""
    cls = bio_class(base)
    return cls.__new__(cls)


@dataclasses.dataclass
class _Part:
    """A submodule converted as a whole: its paths in the model, module, trace and plan."""

    paths: list
    module: nn.Module
    gm: Optional[fx.GraphModule]  # None: a single layer
    layers: list = dataclasses.field(default_factory=list)
    plain: list = dataclasses.field(default_factory=list)

    @property
    def path(self) -> str:
        return self.paths[0]


class _Scoped:
    """A :class:`~biofx.ConfigMap` seen from inside the part at ``prefix`` (names are full paths).

    It plans without weight splitting (Γ = 0): :func:`_number` decides splitting for the
    whole model. The check that every name and pattern matches a layer runs once, for the
    whole model.
    """

    def __init__(self, config_map: ConfigMap, prefix: str) -> None:
        self.config_map, self.prefix = config_map, prefix

    def select(self, name: str, module: nn.Module):
        config, rule = self.config_map.select(_join(self.prefix, name), module)
        return (config.replace(weight_splitting_Gamma=0) if config is not None else None), rule

    def check_all_used(self, layer_names: list) -> None:
        pass


def transform_parts(
    model: nn.Module,
    config_map: ConfigMap,
    seed: int,
    error: TraceError,
    leaf_modules: Iterable[type] = (),
) -> BioRoot:
    """Convert the parts of ``model`` that trace; ``error`` is why the whole model did not.

    Returns a copy of the model's containers with the parts converted in place (a
    ``Bio<Name>``, see the module docstring). Raises :class:`TraceError` when no part with a
    Linear/Conv traces.
    """
    leaves = tuple(leaf_modules)
    parts, eager = [], [("", _short(error))]
    _search(model, "", leaves, {}, set(), parts, eager)
    if not parts:
        raise TraceError(
            f"{error} No submodule holding a Linear/Conv could be converted on its own either "
            f"({'all are inside leaf modules' if _has_layers(model) else 'the model has none'})."
        ) from error
    config_map.check_all_used([name for name, _ in convertible_modules(model)])
    for part in parts:
        _plan(part, config_map)
    _number(parts, seed)
    converted = {id(part.module): _build(part) for part in parts}
    root = _assemble(model, parts, converted)
    root.bio_report = _merge(model, parts, converted, eager, leaves)
    log_plain(root.bio_report.plain)
    for path, reason in eager:
        log.info("biofx runs %s eagerly: %s", path, reason)
    hooks.install()
    return root


# -- search -------------------------------------------------------------------------------
def _search(module, path, leaves, found: dict, inside: set, parts: list, eager: list) -> None:
    """Find the parts below ``module`` (depth first); record untraceable modules in ``eager``."""
    for name, child in module._modules.items():  # not named_children(): it hides a second registration
        child_path = _join(path, name)
        if child is None:
            continue
        if id(child) in found:  # the same module registered twice: convert it at both places
            found[id(child)].paths.append(child_path)
            continue
        if id(child) in inside or not _has_layers(child) or (leaves and isinstance(child, leaves)):
            continue
        if kind_of(child) is not None:
            part = _Part([child_path], child, None)
        elif type(child).forward is nn.Module.forward:  # a container (ModuleList, ModuleDict)
            _search(child, child_path, leaves, found, inside, parts, eager)
            continue
        elif BioTracer(leaves).is_leaf_module(child, ""):  # kept whole, as in a whole-model trace
            continue
        else:
            try:
                part = _Part([child_path], child, trace(child, leaves, None, child_path))
            except TraceError as err:
                eager.append((child_path, _short(err)))
                _search(child, child_path, leaves, found, inside, parts, eager)
                continue
        found[id(child)] = part
        inside.update(id(m) for m in child.modules())
        parts.append(part)


def _short(error: TraceError) -> str:
    """The error's where and what, without the list of fixes."""
    return str(error).partition(" Fixes:")[0]


def _has_layers(module: nn.Module) -> bool:
    return any(kind_of(m) is not None for m in module.modules())


# -- plan, number, build ------------------------------------------------------------------
def _plan(part: _Part, config_map: ConfigMap) -> None:
    scoped = _Scoped(config_map, part.path)
    if part.gm is None:
        part.gm, part.layers, part.plain = _single_layer(part.module, scoped)
    else:
        part.layers, part.plain = plan_layers(part.gm, scoped, part.module, part.path)
    for layer in part.layers:
        layer.config = config_map.select(_join(part.path, layer.name), layer.module)[0]


def _number(parts: list, seed: int) -> None:
    """Whole-model layer indices, seeds and weight splitting (the model's last layer is skipped)."""
    layers = [(part, layer) for part in parts for layer in part.layers]
    total = len(layers)
    for index, (part, layer) in enumerate(layers):
        layer.index = index
        layer.seed = layer.config.seed if layer.config.seed is not None else seed
        cfg = layer.config
        if cfg.fuzzy_lr_distribution is Distribution.LAYER_ADAPTIVE:
            # "-1: set by the transform": l and L of the whole model, not of the part
            layer.config = cfg.replace(
                fuzzy_lr_layer_index=cfg.fuzzy_lr_layer_index if cfg.fuzzy_lr_layer_index >= 0 else index,
                fuzzy_lr_total_layers=cfg.fuzzy_lr_total_layers if cfg.fuzzy_lr_total_layers > 0 else total,
            )
        if total == 1 or index < total - 1:
            name, layer.name = layer.name, _join(part.path, layer.name)  # full path in errors
            try:
                plan_splitting([layer])  # one layer: split unless skipped by config or mark
            finally:
                layer.name = name


def _build(part: _Part) -> BioGraphModule:
    """Run the passes on the part's graph; its state modules get the layers' full paths."""
    return build(part.gm, part.layers, part.plain, type(part.module).__name__, prefix=part.path)


# -- assemble and report ------------------------------------------------------------------
def _assemble(model: nn.Module, parts: list, converted: dict) -> BioRoot:
    """A copy of the containers above the parts, with the parts in place; the root a ``Bio<Name>``."""
    root = _shallow_copy(model, bio_class(type(model)))
    copies = {"": root}

    def container(path: str) -> nn.Module:
        if path not in copies:
            parent_path, _, name = path.rpartition(".")
            parent = container(parent_path)
            copies[path] = parent._modules[name] = _shallow_copy(parent._modules[name])
        return copies[path]

    for part in parts:
        for path in part.paths:
            parent_path, _, name = path.rpartition(".")
            container(parent_path)._modules[name] = converted[id(part.module)]
    return root


def _shallow_copy(module: nn.Module, cls: Optional[type] = None) -> nn.Module:
    """A new module object with the same attributes; its own dicts/sets (submodules, hooks, ...)."""
    cls = cls or type(module)
    clone = cls.__new__(cls)
    clone.__dict__.update({k: copy.copy(v) if isinstance(v, (dict, set)) else v for k, v in vars(module).items()})
    return clone


def _merge(model, parts, converted, eager, leaves) -> FallbackReport:
    """One report for the whole model: the parts' reports with full layer paths."""
    layers, plain, passes = [], [], {}
    for part in parts:
        report = converted[id(part.module)].bio_report
        layers += [dataclasses.replace(r, name=_join(part.path, r.name)) for r in report.converted]
        plain += [(_join(part.path, "" if name == "<root>" else name), why) for name, why in report.plain]
        for name, count in report.passes:
            passes[name] = passes.get(name, 0) + count
    known = {r.name for r in layers} | {name for name, _ in plain}
    plain += [(name, why) for name, why in scripted_layers(model) if name not in known]
    for name, module in convertible_modules(model):
        if name not in known:
            plain.append((name, _why_not(model, name, leaves)))
    paths = tuple(path for part in parts for path in part.paths)
    return FallbackReport(
        tuple(layers),
        tuple(plain),
        tuple(passes.items()),
        capture=f"fallback ({len(paths)} parts)",
        parts=paths,
        eager=tuple(eager),
    )


def _why_not(model: nn.Module, name: str, leaves: tuple) -> str:
    tracer = BioTracer(leaves)
    for owner, module in model.named_modules():
        if owner and name.startswith(owner + ".") and tracer.is_leaf_module(module, ""):
            return f"inside leaf module {owner!r} ({type(module).__name__}), kept eager; {leaf_reason(module)}"
    return "not converted: no traced call of it was found"
