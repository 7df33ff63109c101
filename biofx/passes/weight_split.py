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
from .utils import chain_output, state_attr

NAME = __name__.rpartition(".")[2]  # the tags' "pass": this module's name


def weight_split_pass(gm: fx.GraphModule, layers: list) -> list:
    inserted = []
    for layer in (l for l in layers if l.split):
        act = layer.config.weight_splitting_activation_function
        for site in layer.sites:

            def make(graph, output):
                nodes = []
                if isinstance(act, nn.Module) and not isinstance(act, nn.Identity):
                    layer.state.split_activation = act
                    nodes.append(graph.call_module(state_attr("split_activation"), (output,)))
                elif not isinstance(act, nn.Module):
                    nodes.append(graph.call_function(act, (output,)))
                source = nodes[-1] if nodes else output
                gamma = layer.config.weight_splitting_Gamma
                nodes.append(graph.call_function(ops.weight_split, (source, gamma, layer.kind.channel_dim)))
                return nodes

            for node in chain_output(gm, site, make):
                inserted.append(tags.tag(node, tags.WEIGHT_SPLIT, layer.path, NAME))
    return inserted
