"""dale_pass alone: the weight goes through dale_weight (and dale_inhibit in DANN mode)."""

import pytest
import torch
import torch.nn.functional as F

from biofx import ops
from biofx.passes import dale_pass

from _graphs import check_tags, fc_graph, new_nodes, weight_chain


@pytest.mark.parametrize("mode", ["column", "dann"])
def test_weight_chain_gets_the_dale_nodes(mode):
    gm, layer = fc_graph(apply_dales_principle=True, dale_mode=mode)
    before = {n.name for n in gm.graph.nodes}
    inserted = dale_pass(gm, [layer])
    gm.graph.lint()
    gm.recompile()
    assert inserted == new_nodes(gm, before)
    check_tags(inserted, "dale", "dale")
    call = next(n for n in gm.graph.nodes if n.target is F.linear)
    if mode == "column":
        assert weight_chain(call) == [ops.dale_weight, "fc.weight"]
    else:
        assert weight_chain(call) == [ops.dale_inhibit, ops.dale_weight, "fc.weight"]
    state = gm.biofx_state
    x = torch.randn(3, 4)
    expected = torch.relu(F.linear(x, state.dale_weight(), layer.module.bias))
    torch.testing.assert_close(gm(x), expected)


def test_off_inserts_nothing():
    gm, layer = fc_graph()
    assert dale_pass(gm, [layer]) == []
