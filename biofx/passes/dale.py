"""Pass: Dale's principle as parametrization nodes on the weight.

``w`` → ``dale_weight(w, dale_sign)`` = ``s·|w|`` before the layer uses it, so every forward
pass sees one sign per presynaptic unit; in DANN mode (``BioConfig.dale_mode``) followed by
``dale_inhibit(·, layer.dale_w_ei, layer.dale_w_ie)`` = ``· − |W_EI|·|W_IE|``, the layer's
inhibitory interneurons (see :mod:`biofx.mechanisms.dale`).
"""

from __future__ import annotations

import torch.fx as fx

from .. import ops
from ..mechanisms.dale import INTERNEURON_PARAMS
from .. import registry
from . import tags
from .utils import chain_weight, state_attr

NAME = __name__.rpartition(".")[2]  # the tags' "pass": this module's name


def dale_pass(gm: fx.GraphModule, layers: list) -> list:
    inserted = []
    for layer in (l for l in layers if registry.DALE.is_on(l.config)):
        for site in layer.sites:

            def make(graph, weight):
                sign = graph.get_attr(state_attr("dale_sign"))
                nodes = [sign, graph.call_function(ops.dale_weight, (weight, sign))]
                if layer.config.dale_mode == "dann":
                    w_ei, w_ie = (graph.get_attr(_layer_attr(gm, layer, p)) for p in INTERNEURON_PARAMS)
                    inhibit = graph.call_function(ops.dale_inhibit, (nodes[-1], w_ei, w_ie, layer.kind.out_axis))
                    nodes += [w_ei, w_ie, inhibit]
                return nodes

            for node in chain_weight(gm, layer, site, make):
                inserted.append(tags.tag(node, tags.DALE, layer.path, NAME))
    return inserted


def _layer_attr(gm: fx.GraphModule, layer, name: str) -> str:
    """The ``get_attr`` target of the layer's parameter ``name`` (a one-layer model's graph
    module is not the layer itself: it gets the parameter too)."""
    owner = gm.get_submodule(layer.name)
    if owner is not layer.module:
        owner.register_parameter(name, getattr(layer.module, name))
    return f"{layer.name}.{name}" if layer.name else name
