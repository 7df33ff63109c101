"""activity_probe_pass alone: the layer's output goes through its state module (the probe)."""

import torch
import torch.nn.functional as F

from biofx.passes import activity_probe_pass

from _graphs import check_tags, fc_graph, new_nodes


def test_probe_after_the_output_counts_activity_in_training_only():
    gm, layer = fc_graph(synaptic_scaling_gamma=0.1)
    before = {n.name for n in gm.graph.nodes}
    inserted = activity_probe_pass(gm, [layer])
    gm.graph.lint()
    gm.recompile()
    assert inserted == new_nodes(gm, before)
    assert [(n.op, n.target) for n in inserted] == [("call_module", "biofx_state")]
    check_tags(inserted, "activity", "activity_probe")
    call = next(n for n in gm.graph.nodes if n.target is F.linear)
    assert list(call.users) == inserted
    x = torch.randn(5, 4)
    torch.testing.assert_close(gm(x), torch.relu(layer.module(x)))  # the output is unchanged
    state = gm.biofx_state
    assert int(state.activity_n) == 5
    gm.eval()
    gm(x)
    assert int(state.activity_n) == 5


def test_off_inserts_nothing():
    gm, layer = fc_graph()
    assert activity_probe_pass(gm, [layer]) == []
