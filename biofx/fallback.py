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
* **Parts.** The parts go through the same pipeline as a whole model
  (:func:`biofx.pipeline.convert`, each with its path as prefix) and each becomes a
  :class:`~biofx.BioGraphModule` at its place. Numbering is once over all parts: layer
  indices (RNG keys, LAYER_ADAPTIVE's l and L) count over the whole model, so no two layers
  share a key.
* **Weight splitting.** "The last bio layer is skipped" refers to the whole model's last
  layer. The root does not trace, so execution order across parts is unknown; biofx takes
  the last part in search order (registration order, which is execution order in
  ``nn.Sequential``, Hugging Face and torchvision models) and its last-called layer.
  Mark another layer with ``BioConverter.mark_skip_weight_splitting`` if that is wrong.
* **Root.** The containers on the path from the root to each part are shallow-copied and the
  part is put in the copy, so ``model`` stays plain and shares its parameters and leaf modules
  with the result, as after a whole-model trace. The copied root's class becomes
  ``Bio<Name>``, a cached subclass of :class:`BioRoot` and the model's class: it has the
  model-level methods (:class:`~biofx.model.BioMethods` finds every
  :class:`~biofx.BioSynapses` through ``modules()``), a merged
  :class:`~biofx.report.FallbackReport` as
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

import torch.nn as nn

from . import runtime
from .config import ConfigMap
from .layers import kind_of
from .model import BioMethods
from .passes.plan import convertible_modules, scripted_layers
from .passes.plan import join_path as _join
from .pipeline import Graph, convert, root_layer_graph
from .report import FallbackReport, log_plain
from .tracing import BioTracer, TraceError, leaf_reason, trace

log = logging.getLogger("biofx")

# FallbackReport lives in biofx.report; ``biofx.fallback.FallbackReport`` is documented (and
# old pickles name it), so it is re-exported here.
__all__ = ["transform_parts", "BioRoot", "FallbackReport", "bio_class"]


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
    """A submodule converted as a whole: its paths in the model (several when it is
    registered at several places) and its graph for the pipeline."""

    paths: list
    graph: Graph

    @property
    def path(self) -> str:
        return self.paths[0]


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
    bios = convert([part.graph for part in parts], config_map, model, seed)
    converted = {id(part.graph.module): bio for part, bio in zip(parts, bios)}
    root = _assemble(model, parts, converted)
    root.bio_report = _merge(model, parts, converted, eager, leaves)
    log_plain(root.bio_report.plain)
    for path, reason in eager:
        log.info("biofx runs %s eagerly: %s", path, reason)
    runtime.install()
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
            part = _Part([child_path], Graph(child, root_layer_graph(child), prefix=child_path))
        elif type(child).forward is nn.Module.forward:  # a container (ModuleList, ModuleDict)
            _search(child, child_path, leaves, found, inside, parts, eager)
            continue
        elif BioTracer(leaves).is_leaf_module(child, ""):  # kept whole, as in a whole-model trace
            continue
        else:
            try:
                part = _Part([child_path], Graph(child, trace(child, leaves, None, child_path), prefix=child_path))
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
            container(parent_path)._modules[name] = converted[id(part.graph.module)]
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
        report = converted[id(part.graph.module)].bio_report
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
