"""attach_state_pass alone: one state module per weight, no graph nodes, Dale initialization."""

import torch
import torch.nn as nn

from biofx import BioSynapses
from biofx.passes import attach_state_pass
from biofx.state import STATE_ROOT

from _graphs import fc_graph


def test_state_module_per_layer_and_no_nodes():
    gm, layer = fc_graph(with_state=False)
    layer.index, layer.total, layer.seed = 1, 3, 7
    nodes = list(gm.graph.nodes)
    assert attach_state_pass(gm, [layer]) == []
    gm.graph.lint()
    assert list(gm.graph.nodes) == nodes
    state = getattr(gm, STATE_ROOT)[layer.state_key]
    assert isinstance(state, BioSynapses) and layer.state_key == "fc"
    assert (state.layer_name, state.index, state.layer is layer.module) == ("fc", 1, True)
    assert state.fuzzy_lr.shape == layer.module.weight.shape


def test_tied_layers_share_one_state_and_key_clashes_get_a_suffix():
    gm, layer = fc_graph(with_state=False)
    gm.add_module(STATE_ROOT, nn.ModuleDict({"fc": nn.Identity()}))  # "fc" is taken
    twin = type(layer)("fc2", layer.module, layer.kind, layer.config, "default", [], path="fc2")
    attach_state_pass(gm, [layer, twin])
    assert layer.state_key == twin.state_key == "fc_1"


def test_dale_initialization_happens_when_the_state_is_attached():
    gm, layer = fc_graph(with_state=False, apply_dales_principle=True, dale_mode="column")
    before = layer.module.weight.detach().clone()
    attach_state_pass(gm, [layer])
    state = getattr(gm, STATE_ROOT)[layer.state_key]
    weight = layer.module.weight.detach()
    assert not torch.equal(weight, before)  # initialized
    assert torch.equal(weight, state.dale_sign * weight.abs())  # on the constraint: one sign per input
