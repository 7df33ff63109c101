"""inline_layers_pass alone: a layer's call_module becomes its functional call on get_attr weights."""

import torch
import torch.nn.functional as F

from biofx.passes import inline_layers_pass

from _graphs import check_tags, fc_graph, new_nodes


def test_call_module_becomes_functional_call_on_tagged_weights():
    gm, layer = fc_graph(functional=False, with_state=False)
    x = torch.randn(3, 4)
    expected = gm(x)
    before = {n.name for n in gm.graph.nodes}
    inserted = inline_layers_pass(gm, [layer])
    gm.graph.lint()
    gm.recompile()
    assert [n.op for n in inserted] == ["get_attr", "get_attr", "call_function"]
    assert [n.target for n in inserted] == ["fc.weight", "fc.bias", F.linear]
    assert inserted == new_nodes(gm, before - {"fc"})
    assert not any(n.op == "call_module" for n in gm.graph.nodes)
    check_tags(inserted, "layer", "inline_layers")
    assert all(n.meta["custom"]["biofx"]["kind"] == "Linear" for n in inserted)
    assert layer.sites == [inserted[-1]] and layer.weight_nodes == {inserted[-1]: inserted[0]}
    assert torch.equal(gm(x), expected)


def test_root_layer_call_is_inlined_too():
    import torch.nn as nn
    from biofx.pipeline import Graph, plan, root_layer_graph
    from biofx import ConfigMap, BioConfig

    linear = nn.Linear(4, 6)
    graph = Graph(linear, root_layer_graph(linear))
    plan(graph, ConfigMap(default=BioConfig(seed=0)))
    (layer,) = graph.layers
    inserted = inline_layers_pass(graph.gm, [layer])
    graph.gm.graph.lint()
    graph.gm.recompile()
    assert [n.target for n in inserted] == ["weight", "bias", F.linear]
    check_tags(inserted, "layer", "inline_layers", layer="")
    x = torch.randn(2, 4)
    assert torch.equal(graph.gm(x), linear(x))
