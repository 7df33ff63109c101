"""The plan alone (plan_layers on a hand-built graph) and the pipeline's numbering."""

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

from biofx import BioConfig, ConfigMap
from biofx.pipeline import Graph, number, plan
from biofx.tracing import trace


def two_layer_graph():
    root = nn.Module()
    root.a, root.b = nn.Linear(4, 6), nn.Linear(6, 6)
    graph = fx.Graph()
    x = graph.placeholder("x")
    hidden = graph.call_module("a", (x,))
    graph.output(graph.call_module("b", (graph.call_function(torch.relu, (hidden,)),)))
    return root, fx.GraphModule(root, graph)


def test_plan_layers_selects_configs_by_full_path_and_changes_no_graph():
    root, gm = two_layer_graph()
    nodes = [(n.op, n.target) for n in gm.graph.nodes]
    graph = Graph(root, gm, prefix="enc")
    plan(graph, ConfigMap({"enc.b": None}, default=BioConfig(seed=0)))
    assert [(l.name, l.path) for l in graph.layers] == [("a", "enc.a")]
    assert graph.plain == [("b", "left plain by ConfigMap (name 'enc.b')")]
    assert [(n.op, n.target) for n in gm.graph.nodes] == nodes
    gm.graph.lint()


def test_number_once_over_all_graphs():
    graphs = []
    for prefix in ("p1", "p2"):
        root, gm = two_layer_graph()
        graphs.append(Graph(root, gm, prefix=prefix))
    config = BioConfig(weight_splitting_Gamma=2, fuzzy_lr_distribution="layer_adaptive")
    for graph in graphs:
        plan(graph, ConfigMap(default=config))
    number(graphs, seed=5)
    layers = [layer for graph in graphs for layer in graph.layers]
    assert [(l.path, l.index, l.total, l.seed) for l in layers] == [
        ("p1.a", 0, 4, 5), ("p1.b", 1, 4, 5), ("p2.a", 2, 4, 5), ("p2.b", 3, 4, 5)]
    assert [l.config.fuzzy_lr_layer_index for l in layers] == [0, 1, 2, 3]
    assert {l.config.fuzzy_lr_total_layers for l in layers} == {4}
    assert [l.split for l in layers] == [True, True, True, False]  # the model's last layer is not split


def test_number_names_the_full_path_when_gamma_does_not_divide():
    root, gm = two_layer_graph()
    graph = Graph(root, gm, prefix="enc")
    plan(graph, ConfigMap(default=BioConfig(weight_splitting_Gamma=4)))
    with pytest.raises(ValueError, match=r"layer 'enc.a' .*mark_skip_weight_splitting\(model.enc.a\)"):
        number([graph], seed=0)


def test_traced_model_plans_in_execution_order():
    class Back(nn.Module):
        def __init__(self):
            super().__init__()
            self.second, self.first = nn.Linear(6, 2), nn.Linear(4, 6)

        def forward(self, x):
            return self.second(self.first(x))

    model = Back()
    graph = Graph(model, trace(model))
    plan(graph, ConfigMap(default=BioConfig()))
    assert [l.name for l in graph.layers] == ["first", "second"]
