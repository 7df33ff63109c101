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
importable class (:func:`biofx.pipeline.bio_class`), so a saved model loads in a fresh process.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.graph_module import _forward_from_src

try:  # newer torch: is_fx_tracing() is true under torch.export too, and logs a warning saying so
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing as is_fx_tracing
except ImportError:
    from torch.fx._symbolic_trace import is_fx_tracing

from ._leaf import bio_annotation
from .passes.tags import LAYER
from .state import STATE_ROOT

__all__ = ["BioLayer", "layer_graph"]


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
        if not is_fx_tracing():  # a symbolic trace of the bio model records the graph's nodes
            state, weight = self._modules[STATE_ROOT], self._parameters["weight"]
            if state.undrawn and not weight.is_meta:
                state.raise_undrawn()
            if state.per_weight_shape != weight.shape:  # a new weight (resize_token_embeddings)
                state.follow_weight()
        if torch.compiler.is_compiling():  # compiled graphs tag the layer's own ops too (nested tags win)
            with bio_annotation(LAYER):
                return self.__dict__["_bio_forward"](self, input)
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

    # -- pickling and copies: rebuilt from the importable class (biofx.pipeline.reduce_converted)
    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.recompile()
        self._modules[STATE_ROOT].attach(self)
