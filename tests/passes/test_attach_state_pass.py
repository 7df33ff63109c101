"""attach_state_pass alone: the layer's state module, no graph nodes, Dale initialization."""

import torch

from biofx import BioSynapses
from biofx.passes import attach_state_pass
from biofx.state import STATE_ROOT

from _graphs import fc_graph


def test_state_module_of_the_layer_and_no_nodes():
    gm, layer = fc_graph(with_state=False)
    layer.index, layer.total, layer.seed = 1, 3, 7
    nodes = list(gm.graph.nodes)
    assert attach_state_pass(gm, [layer]) == []
    gm.graph.lint()
    assert list(gm.graph.nodes) == nodes
    state = getattr(gm, STATE_ROOT)
    assert isinstance(state, BioSynapses) and layer.state is state
    assert (state.layer_name, state.index, state.layer is layer.module) == ("fc", 1, True)
    assert state.fuzzy_lr.shape == layer.module.weight.shape


def test_a_tied_layer_gets_the_state_it_shares():
    first, layer = fc_graph(with_state=False)
    attach_state_pass(first, [layer])
    second, twin = fc_graph(with_state=False)
    twin.module, twin.state = layer.module, layer.state  # the pipeline passes a tied weight's state on
    attach_state_pass(second, [twin])
    assert getattr(second, STATE_ROOT) is getattr(first, STATE_ROOT) is layer.state


def test_state_takes_the_mode_of_its_layer():
    gm, layer = fc_graph(with_state=False)
    layer.module.eval()
    attach_state_pass(gm, [layer])
    assert not layer.state.training


def test_dale_initialization_happens_when_the_state_is_attached():
    gm, layer = fc_graph(with_state=False, apply_dales_principle=True, dale_mode="column")
    before = layer.module.weight.detach().clone()
    attach_state_pass(gm, [layer])
    weight = layer.module.weight.detach()
    assert not torch.equal(weight, before)  # initialized
    assert torch.equal(weight, layer.state.dale_sign * weight.abs())  # on the constraint: one sign per input
