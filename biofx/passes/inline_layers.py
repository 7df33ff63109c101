"""Pass: replace each layer's ``call_module`` with its functional call on ``get_attr`` weights.

``fc1(x)`` becomes ``F.linear(x, fc1.weight, fc1.bias)`` (convolutions keep their stride,
padding, dilation, groups and padding mode), numerically identical to the module call. The
weight then flows through explicit graph nodes, which the later passes rewrite.
"""

from __future__ import annotations

import torch.fx as fx

from . import tags

NAME = "inline_layers"


def inline_layers_pass(gm: fx.GraphModule, layers: list) -> list:
    inserted = []
    graph = gm.graph
    for layer in layers:
        for site in list(layer.sites):
            if site.op != "call_module":  # already functional (a model that is one layer)
                continue
            with graph.inserting_before(site):
                weight = graph.get_attr(f"{layer.name}.weight")
                bias = graph.get_attr(f"{layer.name}.bias") if layer.module.bias is not None else None
                call = layer.kind.emit(graph, site.args[0], weight, bias, layer.module)
            new_nodes = [n for n in (weight, bias) if n is not None] + _nodes_between(weight, call)
            for node in new_nodes:
                tags.copy_source_meta(site, node)
                tags.tag(node, tags.LAYER, layer.name, NAME, kind=layer.kind.name)
            site.replace_all_uses_with(call)
            graph.erase_node(site)
            layer.sites[layer.sites.index(site)] = call
            layer.weight_nodes[call] = weight
            inserted += new_nodes
    return inserted


def _nodes_between(first: fx.Node, last: fx.Node) -> list:
    """Nodes after ``first`` up to and including ``last`` (what ``emit`` inserted)."""
    out, node = [], first.next
    while node is not last:
        if node.op == "call_function":
            out.append(node)
        node = node.next
    return out + [last]
