"""Pass: Dale's principle as a parametrization node on the weight.

``w`` → ``dale_weight(w, dale_sign)`` = ``sign·relu(sign·w)`` before the layer uses it, so
every forward pass sees one sign per presynaptic unit.
"""

from __future__ import annotations

import torch.fx as fx

from .. import ops
from . import tags
from .attach_state import state_attr

NAME = "dale"


def chain_weight(gm: fx.GraphModule, layer, site: fx.Node, make) -> list:
    """Insert ``make(graph, weight_node) -> node`` between the site's weight and the site."""
    graph = gm.graph
    weight = layer.weight_nodes[site]
    with graph.inserting_before(site):
        new_nodes = make(graph, weight)
    site.replace_input_with(weight, new_nodes[-1])
    layer.weight_nodes[site] = new_nodes[-1]
    for node in new_nodes:
        tags.copy_source_meta(site, node)
    return new_nodes


def dale_pass(gm: fx.GraphModule, layers: list) -> list:
    inserted = []
    for layer in (l for l in layers if l.config.apply_dales_principle):
        for site in layer.sites:

            def make(graph, weight):
                sign = graph.get_attr(state_attr(layer, "dale_sign"))
                return [sign, graph.call_function(ops.dale_weight, (weight, sign))]

            for node in chain_weight(gm, layer, site, make):
                inserted.append(tags.tag(node, tags.DALE, layer.name, NAME))
    return inserted
