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


def test_a_layers_own_graph_is_inlined_on_the_layer():
    """In a bio layer's own graph (``input → call_module("") → output``) the targets are the layer's."""
    import copy

    import torch.nn as nn

    from biofx import BioConfig
    from biofx.bio_layer import layer_graph
    from biofx.pipeline import bio_class
    from biofx.layers import kind_of
    from biofx.passes.plan import PlannedLayer

    linear = nn.Linear(4, 6)
    module = copy.deepcopy(linear)
    module.__class__ = bio_class(nn.Linear, layer=True)
    module.graph = layer_graph()
    site = next(n for n in module.graph.nodes if n.op == "call_module")
    layer = PlannedLayer("", module, kind_of(module), BioConfig(seed=0), "default", [site], path="fc")
    inserted = inline_layers_pass(module, [layer])
    module.graph.lint()
    module.recompile()
    assert [n.target for n in inserted] == ["weight", "bias", F.linear]
    check_tags(inserted, "layer", "inline_layers", layer="fc")
    x = torch.randn(2, 4)
    assert torch.equal(module.__dict__["_bio_forward"](module, x), linear(x))
