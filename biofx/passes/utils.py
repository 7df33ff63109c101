"""Graph helpers shared by the passes: where state lives and how nodes are chained in.

* :func:`state_attr`: the ``get_attr`` / ``call_module`` target of a layer's state
  (``biofx_state.<attr>``).
* :func:`chain_weight`: insert nodes between a call site's weight and the site
  (weight → dale → fuzzy → volume → layer).
* :func:`chain_output`: insert nodes after a call site; its users read the last one
  (layer → split → probe).

Both copy the site's source location onto the new nodes, so a node's stack trace points at
the user's code; the caller tags them (:mod:`biofx.passes.tags`).
"""

from __future__ import annotations

import torch.fx as fx

from ..state import STATE_ROOT
from . import tags


def state_attr(attr: str) -> str:
    """The ``get_attr`` target of a layer's state buffer or submodule (``""``: the state module)."""
    return f"{STATE_ROOT}.{attr}" if attr else STATE_ROOT


def chain_weight(gm: fx.GraphModule, layer, site: fx.Node, make) -> list:
    """Insert ``make(graph, weight_node) -> nodes`` between the site's weight and the site."""
    graph = gm.graph
    weight = layer.weight_nodes[site]
    with graph.inserting_before(site):
        new_nodes = make(graph, weight)
    site.replace_input_with(weight, new_nodes[-1])
    layer.weight_nodes[site] = new_nodes[-1]
    for node in new_nodes:
        tags.copy_source_meta(site, node)
    return new_nodes


def chain_output(gm: fx.GraphModule, site: fx.Node, make) -> list:
    """Insert ``make(graph, output) -> nodes`` after ``site``; its users then read the last node."""
    graph = gm.graph
    users = list(site.users)
    with graph.inserting_before(site.next):
        new_nodes = make(graph, site)
    for user in users:
        user.replace_input_with(site, new_nodes[-1])
    for node in new_nodes:
        tags.copy_source_meta(site, node)
    return new_nodes
