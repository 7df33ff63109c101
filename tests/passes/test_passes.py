"""Graph structure after the passes: tags, chaining order, shared layers, neutrality."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import biofx
from biofx import ops
from biofx.passes import PASSES, tags
from conftest import bio_nodes


def full_config():
    return dict(weight_splitting_Gamma=2, apply_dales_principle=True, automatic=("fuzzy", "volume"),
                acts_on="gradient", synaptic_scaling_gamma=0.01)


def test_weight_chain_order_and_tags():
    bio = biofx.transform(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), **full_config())
    linear = next(n for n in bio_nodes(bio) if n.target is F.linear)
    chain, node = [], linear.args[1]
    while node.op != "get_attr":
        chain.append(node.target)
        node = node.args[0]
    assert chain == [ops.volume_grad, ops.fuzzy_grad, ops.dale_inhibit, ops.dale_weight]
    assert node.target == "weight"  # the layer's own graph reads its own weight
    probe = next(iter(next(iter(linear.users)).users))
    assert tags.get_tag(probe)["mechanism"] == "activity"


def test_every_new_node_is_tagged_and_original_nodes_are_not():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    plain_gm = torch.fx.symbolic_trace(model)
    bio = biofx.transform(copy.deepcopy(model), **full_config())
    original = {n.name for n in plain_gm.graph.nodes if n.op in ("placeholder", "output", "call_function")}
    original |= {n.name for n in plain_gm.graph.nodes if n.op == "call_module" and n.target == "1"}
    for node in bio_nodes(bio):
        tag = tags.get_tag(node)
        if node.name in original:
            assert tag is None, node.name
        else:
            assert tag is not None and tag["mechanism"] in {"layer", "dale", "fuzzy", "volume", "weight_split", "activity"}, node.name
            assert tag["pass"] in {p.__name__.replace("_pass", "") for p in PASSES}


def test_pass_results_in_report():
    bio = biofx.transform(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), **full_config())
    counts = dict(bio.bio_report.passes)
    assert list(counts) == [p.__name__ for p in PASSES]
    assert counts["dale_pass"] == 10 and counts["grad_nodes_pass"] == 10


def test_shared_layer_called_twice_shares_state():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    model = Twice()
    bio = biofx.transform(copy.deepcopy(model), fuzzy_lr_distribution="baseline")
    assert len(bio.bio_layers()) == 1
    x = torch.randn(2, 4)
    torch.testing.assert_close(bio(x), model(x))
    assert sum(n.target is F.linear for n in bio_nodes(bio)) == 1  # one layer, one graph
    assert [n.target for n in bio.bio_graph.graph.nodes if n.op == "call_module"] == ["fc", "fc"]


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_conv_padding_modes_exact(padding_mode):
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, padding_mode=padding_mode, stride=2, dilation=1), nn.ReLU(),
                          nn.Conv2d(4, 2, 3, groups=2, bias=False))
    reference = copy.deepcopy(model)
    bio = biofx.transform(copy.deepcopy(model), fuzzy_lr_distribution="baseline")
    x = torch.randn(2, 2, 9, 9)
    assert torch.equal(bio(x), reference(x))


def test_rewritten_model_can_be_traced_again():
    bio = biofx.transform(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), **full_config())
    again = torch.fx.symbolic_trace(bio)
    targets = [n.target for n in again.graph.nodes if n.op == "call_function"]
    assert ops.fuzzy_grad in targets and ops.volume_grad in targets and ops.weight_split in targets
