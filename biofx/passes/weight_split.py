"""Pass: multi-synaptic connectivity (weight splitting, Γ > 1).

After a split layer's output y: ``a = act(y)`` (``weight_splitting_activation_function``,
omitted when it is the identity), then ``weight_split(a, Γ, channel_dim)`` sums each group
of Γ consecutive output units and gives every member the group's sum.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from .. import ops
from . import tags
from .attach_state import state_attr

NAME = "weight_split"


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


def weight_split_pass(gm: fx.GraphModule, layers: list) -> list:
    inserted = []
    for layer in (l for l in layers if l.split):
        act = layer.config.weight_splitting_activation_function
        states = getattr(gm, "biofx_state")
        for site in layer.sites:

            def make(graph, output):
                nodes = []
                if isinstance(act, nn.Module) and not isinstance(act, nn.Identity):
                    states[layer.state_key].split_activation = act
                    nodes.append(graph.call_module(state_attr(layer, "split_activation"), (output,)))
                elif not isinstance(act, nn.Module):
                    nodes.append(graph.call_function(act, (output,)))
                source = nodes[-1] if nodes else output
                gamma = layer.config.weight_splitting_Gamma
                nodes.append(graph.call_function(ops.weight_split, (source, gamma, layer.kind.channel_dim)))
                return nodes

            for node in chain_output(gm, site, make):
                inserted.append(tags.tag(node, tags.WEIGHT_SPLIT, layer.name, NAME))
    return inserted
