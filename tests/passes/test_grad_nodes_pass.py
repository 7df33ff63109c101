"""grad_nodes_pass alone: fuzzy and volume gradient nodes on the weight (acts_on="gradient")."""

import torch
import torch.nn.functional as F

from biofx import ops
from biofx.passes import grad_nodes_pass

from _graphs import check_tags, fc_graph, new_nodes, weight_chain


def test_fuzzy_and_volume_nodes_scale_the_gradient_only():
    gm, layer = fc_graph(automatic=("fuzzy", "volume"), acts_on="gradient", fuzzy_lr_distribution="uniform")
    before = {n.name for n in gm.graph.nodes}
    inserted = grad_nodes_pass(gm, [layer])
    gm.graph.lint()
    gm.recompile()
    assert inserted == new_nodes(gm, before)
    check_tags([n for n in inserted if n.target in (ops.fuzzy_grad, "biofx_state.fuzzy_lr")], "fuzzy", "grad_nodes")
    check_tags([n for n in inserted if n not in inserted[:2]], "volume", "grad_nodes")
    call = next(n for n in gm.graph.nodes if n.target is F.linear)
    assert weight_chain(call) == [ops.volume_grad, ops.fuzzy_grad, "fc.weight"]
    x = torch.randn(3, 4)
    torch.testing.assert_close(gm(x), torch.relu(layer.module(x)))  # identities in the forward pass


def test_fuzzy_node_multiplies_the_gradient_by_f():
    gm, layer = fc_graph(automatic=("fuzzy",), acts_on="gradient", fuzzy_lr_distribution="uniform")
    grad_nodes_pass(gm, [layer])
    gm.recompile()
    x = torch.randn(3, 4)
    gm(x).sum().backward()
    plain = layer.module.weight.grad.clone()
    layer.module.weight.grad = None
    torch.relu(F.linear(x, layer.module.weight, layer.module.bias)).sum().backward()
    torch.testing.assert_close(plain, layer.module.weight.grad * gm.biofx_state.fuzzy_lr)


def test_update_mode_and_tied_weights_insert_nothing():
    gm, layer = fc_graph(automatic=("fuzzy", "volume"), acts_on="update")
    assert grad_nodes_pass(gm, [layer]) == []
    gm, layer = fc_graph(automatic=("fuzzy",), acts_on="gradient")
    gm.biofx_state.shared_with = ("embedding.weight",)  # scaled on the whole .grad at the step
    assert grad_nodes_pass(gm, [layer]) == []
