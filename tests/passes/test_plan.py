"""The plan alone (plan_layers on a hand-built graph) and the pipeline's numbering."""

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

from biofx import BioConfig, ConfigMap
from biofx.passes.plan import output_layers, plan_layers, plan_modules, python_path
from biofx.pipeline import number
from biofx.tracing import trace


def two_layer_graph():
    root = nn.Module()
    root.a, root.b = nn.Linear(4, 6), nn.Linear(6, 6)
    graph = fx.Graph()
    x = graph.placeholder("x")
    hidden = graph.call_module("a", (x,))
    graph.output(graph.call_module("b", (graph.call_function(torch.relu, (hidden,)),)))
    return root, fx.GraphModule(root, graph)


def test_plan_layers_selects_configs_by_path_and_changes_no_graph():
    root, gm = two_layer_graph()
    nodes = [(n.op, n.target) for n in gm.graph.nodes]
    layers, plain = plan_layers(gm, ConfigMap({"b": None}, default=BioConfig(seed=0)), root)
    assert [(l.name, l.path) for l in layers] == [("a", "a")]
    assert plain == [("b", "left plain by ConfigMap (name 'b')")]
    assert [(n.op, n.target) for n in gm.graph.nodes] == nodes
    gm.graph.lint()


def test_number_in_execution_order_and_the_output_layer_unsplit():
    root, gm = two_layer_graph()
    config = BioConfig(weight_splitting_Gamma=2, fuzzy_lr_distribution="layer_adaptive")
    layers, _ = plan_layers(gm, ConfigMap(default=config), root)
    assert output_layers(gm, root) == {"b"}
    number(layers, seed=5, outputs={"b"})
    assert [(l.path, l.index, l.total, l.seed) for l in layers] == [("a", 0, 2, 5), ("b", 1, 2, 5)]
    assert [l.config.fuzzy_lr_layer_index for l in layers] == [0, 1]
    assert {l.config.fuzzy_lr_total_layers for l in layers} == {2}
    assert [l.split for l in layers] == [True, False]  # the model's output layer is not split


def test_gamma_error_names_every_layer_with_a_python_fix():
    root, gm = two_layer_graph()
    layers, _ = plan_layers(gm, ConfigMap(default=BioConfig(weight_splitting_Gamma=4)), root)
    with pytest.raises(ValueError, match="it does not for 2 layers") as info:
        number(layers, seed=0)
    message = str(info.value)
    assert "'a' (Linear, 6 outputs, Γ=4)" in message and "'b' (Linear, 6 outputs, Γ=4)" in message
    assert "mark_skip_weight_splitting(model.a)" in message and "mark_skip_weight_splitting(model.b)" in message
    assert python_path("0") == "model[0]" and python_path("encoder.layer.3.dense") == "model.encoder.layer[3].dense"


def test_the_output_layer_is_the_models_even_when_left_plain():
    """Weight splitting skips the layer whose output is the model's output, bio or not."""
    import biofx

    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    bio = biofx.transform(model, ConfigMap({"4": None}, default=BioConfig(weight_splitting_Gamma=2)))
    assert [layer.name for layer in bio.bio_report.converted if "weight_split (Γ=2)" in layer.mechanisms] == ["0", "2"]
    tree = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    bio = biofx.transform(tree, ConfigMap({"4": None}, default=BioConfig(weight_splitting_Gamma=2)), capture="modules")
    assert [layer.name for layer in bio.bio_report.converted if "weight_split (Γ=2)" in layer.mechanisms] == ["0", "2"]


def test_traced_model_plans_in_execution_order():
    class Back(nn.Module):
        def __init__(self):
            super().__init__()
            self.second, self.first = nn.Linear(6, 2), nn.Linear(4, 6)

        def forward(self, x):
            return self.second(self.first(x))

    model = Back()
    layers, _ = plan_layers(trace(model), ConfigMap(default=BioConfig()), model)
    assert [l.name for l in layers] == ["first", "second"]


def test_module_tree_plan_keeps_leaf_modules_plain():
    model = nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2))
    layers, plain = plan_modules(model, ConfigMap(default=BioConfig()))
    assert [l.path for l in layers] == ["0"]
    assert plain[0][0] == "1.out_proj" and "nn.MultiheadAttention reads out_proj.weight" in plain[0][1]
