"""Small hand-built graphs for running one pass alone.

``fc_graph()``: ``x → fc(x) → relu → output`` on a root holding ``fc = nn.Linear(4, 6)``,
with the layer planned by hand (a :class:`~biofx.passes.plan.PlannedLayer`). ``functional=True``
builds the graph the ``inline_layers`` pass leaves (``F.linear(x, fc.weight, fc.bias)``);
``with_state`` attaches the state module as ``attach_state`` would (not registered with the
optimizer-step hooks).
"""

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from biofx import BioConfig
from biofx.layers import kind_of
from biofx.passes import tags
from biofx.passes.plan import PlannedLayer
from biofx.state import STATE_ROOT, BioSynapses


def fc_graph(functional: bool = True, with_state: bool = True, **config):
    """``(gm, layer)``: the hand-built graph and its planned layer."""
    torch.manual_seed(0)
    root = nn.Module()
    root.fc = nn.Linear(4, 6)
    graph = fx.Graph()
    x = graph.placeholder("x")
    if functional:
        weight, bias = graph.get_attr("fc.weight"), graph.get_attr("fc.bias")
        call = graph.call_function(F.linear, (x, weight, bias))
    else:
        call = graph.call_module("fc", (x,))
    graph.output(graph.call_function(torch.relu, (call,)))
    gm = fx.GraphModule(root, graph)
    layer = PlannedLayer("fc", root.fc, kind_of(root.fc), BioConfig(seed=0, **config), "default", [call], path="fc")
    if functional:
        layer.weight_nodes[call] = weight
    if with_state:
        layer.state = BioSynapses("fc", root.fc, layer.kind, layer.config, 0, 1, 0, register=False)
        gm.add_module(STATE_ROOT, layer.state)
    return gm, layer


def new_nodes(gm, before: set) -> list:
    """The nodes of ``gm`` that are not in ``before`` (names), in graph order."""
    return [node for node in gm.graph.nodes if node.name not in before]


def check_tags(nodes, mechanism: str, pass_name: str, layer: str = "fc") -> None:
    for node in nodes:
        tag = tags.get_tag(node)
        assert tag is not None, node.name
        assert (tag["mechanism"], tag["layer"], tag["pass"]) == (mechanism, layer, pass_name), (node.name, tag)


def weight_chain(call) -> list:
    """The targets from the call's weight input back to the ``get_attr`` of the weight."""
    chain, node = [], call.args[1]
    while node.op != "get_attr":
        chain.append(node.target)
        node = node.args[0]
    return chain + [node.target]
