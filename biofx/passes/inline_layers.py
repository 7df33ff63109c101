"""Pass: replace each layer's ``call_module`` with its functional call on ``get_attr`` weights.

``fc1(x)`` becomes ``F.linear(x, fc1.weight, fc1.bias)`` (convolutions keep their stride,
padding, dilation, groups and padding mode), numerically identical to the module call. The
weight then flows through explicit graph nodes, which the later passes rewrite. A model
that is one layer is a graph calling it once (target ``""``) and is inlined the same way.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from . import tags
from .plan import join_path

NAME = __name__.rpartition(".")[2]  # the tags' "pass": this module's name


def inline_layers_pass(gm: fx.GraphModule, layers: list) -> list:
    inserted = []
    for layer in layers:
        for site in list(layer.sites):
            call, weight, new_nodes = inline_call(gm, site, layer.name, layer.module, layer.kind)
            for node in new_nodes:
                tags.tag(node, tags.LAYER, layer.path, NAME, kind=layer.kind.name)
            layer.sites[layer.sites.index(site)] = call
            layer.weight_nodes[call] = weight
            inserted += new_nodes
    return inserted


def inline_call(gm: fx.GraphModule, site: fx.Node, name: str, module: nn.Module, kind) -> tuple:
    """Replace the call ``site`` of layer ``name`` by its functional call (untagged).

    Returns ``(call, weight node, new nodes)``.
    """
    graph = gm.graph
    with graph.inserting_before(site):
        weight = graph.get_attr(join_path(name, "weight"))
        bias = graph.get_attr(join_path(name, "bias")) if module.bias is not None else None
        call = kind.emit(graph, site.args[0], weight, bias, module)
    new_nodes = [n for n in (weight, bias) if n is not None] + _nodes_between(weight, call)
    for node in new_nodes:
        tags.copy_source_meta(site, node)
    site.replace_all_uses_with(call)
    graph.erase_node(site)
    return call, weight, new_nodes


def _nodes_between(first: fx.Node, last: fx.Node) -> list:
    """Nodes after ``first`` up to and including ``last`` (what ``emit`` inserted)."""
    out, node = [], first.next
    while node is not last:
        if node.op == "call_function":
            out.append(node)
        node = node.next
    return out + [last]
