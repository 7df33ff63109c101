"""Bio layer modules: a converted layer stays the same object, in its place in the model's tree.

``biofx.transform`` converts a layer in place, as torchao's ``quantize_`` and PEFT's adapter
injection do: the layer object keeps its parameters (same names, same ``Parameter``
objects), its hooks, its mode and its place in the tree, and its class becomes
``Bio<Name>``, a subclass of :class:`BioLayer` and of its own class (``isinstance(bio.fc,
nn.Linear)`` holds). A bio layer:

* owns its bio state: a :class:`~biofx.BioSynapses` child named ``biofx_state``, so
  ``state_dict()`` has ``fc.biofx_state.fuzzy_lr`` beside ``fc.weight``, and the state moves,
  loads and shards with the layer;
* computes its forward from an ``fx.Graph`` (:attr:`BioLayer.graph`, like a
  ``torch.fx.GraphModule``'s): ``input → layer call → output``, rewritten by the passes
  (:mod:`biofx.passes`) into ``w → dale → fuzzy → volume → F.linear → split → probe``.
  :attr:`BioLayer.code` shows the Python it runs.

Pickling (``torch.save(model)``, ``copy.deepcopy``) rebuilds ``Bio<Name>`` from the layer's
importable class, so a saved model loads in a fresh process.
"""

from __future__ import annotations

from typing import Optional

import torch.fx as fx
import torch.nn as nn
from torch.fx.graph_module import _forward_from_src

from .state import STATE_ROOT

__all__ = ["BioLayer", "bio_class", "layer_graph"]


def layer_graph() -> fx.Graph:
    """The graph of a layer before the passes: ``input → call_module("") → output``.

    The ``inline_layers`` pass replaces the call with the layer's functional form.
    """
    graph = fx.Graph()
    x = graph.placeholder("input")
    graph.output(graph.call_module("", (x,)))
    return graph


class BioLayer(nn.Module):
    """Mixin of a converted layer (see the module docstring); put before the layer's class.

    Attributes:
        graph: the layer's rewritten ``fx.Graph`` (targets relative to the layer:
            ``weight``, ``biofx_state.fuzzy_lr``, ...).
        bio_plan: its :class:`~biofx.pipeline.LayerPlan` (config, ConfigMap rule, index, split).
    """

    graph: fx.Graph

    def forward(self, input):
        state = self._modules[STATE_ROOT]
        if state.undrawn and not self.weight.is_meta:
            state.raise_undrawn()
        if state.per_weight_shape != self.weight.shape:  # a new weight (resize_token_embeddings)
            state.follow_weight()
        return self.__dict__["_bio_forward"](self, input)

    @property
    def bio_state(self):
        """The layer's :class:`~biofx.BioSynapses`."""
        return self._modules[STATE_ROOT]

    @property
    def code(self) -> str:
        """The Python source the forward runs (generated from :attr:`graph`)."""
        return self.graph.python_code(root_module="self").src

    def recompile(self) -> None:
        """Generate the forward from :attr:`graph` (after a pass changed it)."""
        code = self.graph.python_code(root_module="self")
        self.__dict__["_bio_forward"] = _forward_from_src(code.src, code.globals)

    # -- pickling and copies: rebuilt from the importable class ----------------------------
    def __reduce_ex__(self, protocol: int):
        return reduce_converted(self)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.recompile()
        self._modules[STATE_ROOT].attach(self)


_CLASSES: dict[tuple, type] = {}


def bio_class(base: type, *, root: bool = False, layer: bool = False) -> type:
    """The cached class of a converted module: ``Bio<Name>(BioLayer, base)`` for a layer,
    ``(BioMethods, base)`` for a transformed model's root (its name kept, so Hugging Face
    ``save_pretrained`` and ``repr`` say the model's own class), both for a model that is one
    layer."""
    key = (base, root, layer)
    cls = _CLASSES.get(key)
    if cls is None:
        from .model import BioMethods, FollowsResize

        mixins = ((BioMethods,) if root else ()) + ((BioLayer,) if layer else ())
        if root and hasattr(base, "resize_token_embeddings"):  # Hugging Face
            mixins = (FollowsResize, *mixins)
        name = f"Bio{base.__name__}" if layer else base.__name__
        attrs = {"__module__": base.__module__ if not layer else __name__, "__qualname__": name, "_biofx_key": key}
        cls = _CLASSES[key] = type(name, (*mixins, base), attrs)
    return cls


def reduce_converted(module: nn.Module) -> tuple:
    """``__reduce_ex__`` of a converted module: rebuilt from its importable class, without the
    generated forward (made again from the graph) and the cached model graph."""
    state = dict(module.__dict__)
    for name in ("_bio_forward", "_biofx_graph"):
        state.pop(name, None)
    return (_rebuild, type(module)._biofx_key, state)


def _rebuild(base: type, root: bool, layer: bool) -> nn.Module:
    """Unpickle a converted module: an empty instance; pickle then restores its state."""
    cls = bio_class(base, root=root, layer=layer)
    return cls.__new__(cls)


def original_class(module: nn.Module) -> Optional[type]:
    """The class a converted module had before ``transform`` (``None`` for another module)."""
    key = getattr(type(module), "_biofx_key", None)
    return None if key is None else key[0]
