"""Pass: activity probes for ACTIVITY fuzzy rates and synaptic scaling.

After the layer's (possibly split) output y, ``y = biofx_state.<layer>(y)``: the layer's
state module counts, per output unit, how often |y| > 0.01 and the positive part of y
(training mode only) and returns y unchanged.
"""

from __future__ import annotations

import torch.fx as fx

from .. import registry
from . import tags
from .utils import chain_output, state_attr

NAME = __name__.rpartition(".")[2]  # the tags' "pass": this module's name


def activity_probe_pass(gm: fx.GraphModule, layers: list) -> list:
    inserted = []
    for layer in (l for l in layers if registry.ACTIVITY.is_on(l.config)):
        for site in layer.sites:
            output = _final_output(site)

            def make(graph, out):
                return [graph.call_module(state_attr(""), (out,))]

            for node in chain_output(gm, output, make):
                inserted.append(tags.tag(node, tags.ACTIVITY, layer.path, NAME))
    return inserted


def _final_output(site: fx.Node) -> fx.Node:
    """The last node of the site's output chain (after any split nodes)."""
    node = site
    while len(node.users) == 1:
        user = next(iter(node.users))
        tag = tags.get_tag(user)
        if tag is None or tag["mechanism"] != tags.WEIGHT_SPLIT:
            break
        node = user
    return node
