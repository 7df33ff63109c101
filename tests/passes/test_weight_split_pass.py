"""weight_split_pass: alone on a hand-built graph, and forward outputs against the explicit formula
for every layer kind."""

import copy
import pytest
import torch
import torch.nn as nn

import biofx
from biofx.passes import tags
from conftest import bio_nodes

GAMMA = 2


def reference_split(y, gamma, dim):
    """The reference's formula: repeat_interleave(view(..., C/Γ, Γ).sum, Γ) along ``dim``."""
    y = y.movedim(dim, -1)
    c = y.shape[-1]
    summed = y.reshape(*y.shape[:-1], c // gamma, gamma).sum(-1)
    return torch.repeat_interleave(summed, gamma, -1).movedim(-1, dim)


KINDS = {
    "linear": (lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)), lambda: torch.randn(3, 6), -1),
    "linear3d": (lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)), lambda: torch.randn(2, 5, 6), -1),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Conv1d(8, 2, 3)), lambda: torch.randn(2, 3, 9), 1),
    "conv2d": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 3)), lambda: torch.randn(2, 3, 7, 7), 1),
    "conv3d": (lambda: nn.Sequential(nn.Conv3d(3, 8, 3), nn.ReLU(), nn.Conv3d(8, 2, 3)), lambda: torch.randn(1, 3, 5, 5, 5), 1),
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("activation", [nn.Identity(), nn.Tanh(), torch.sigmoid])
def test_split_forward_matches_formula(kind, activation):
    make, make_x, dim = KINDS[kind]
    model, x = make(), make_x()
    bio = biofx.transform(copy.deepcopy(model), weight_splitting_Gamma=GAMMA, weight_splitting_activation_function=activation,
                          fuzzy_lr_distribution="baseline")
    act = activation
    hidden = reference_split(act(model[0](x)), GAMMA, dim)
    expected = model[2](torch.relu(hidden))  # last layer is not split
    torch.testing.assert_close(bio(x), expected)


def test_nodes_tagged_and_last_layer_skipped():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 4))
    bio = biofx.transform(copy.deepcopy(model), weight_splitting_Gamma=3, weight_splitting_activation_function="relu")
    split = [tags.get_tag(n) for n in bio_nodes(bio) if (tags.get_tag(n) or {}).get("mechanism") == "weight_split"]
    assert sorted({t["layer"] for t in split}) == ["0", "2"]
    assert len(split) == 4  # activation + group sum for each split layer


def test_single_layer_model_is_split_and_validated():
    with pytest.raises(ValueError, match="must evenly divide the number of features \\(15\\)"):
        biofx.transform(nn.Linear(10, 15), weight_splitting_Gamma=2)
    lin = nn.Linear(10, 16)
    bio = biofx.transform(copy.deepcopy(lin), weight_splitting_Gamma=2, fuzzy_lr_distribution="baseline")
    x = torch.randn(3, 10)
    torch.testing.assert_close(bio(x), reference_split(lin(x), 2, -1))


def test_gamma_error_names_layer_count_and_gamma():
    model = nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 4))
    with pytest.raises(ValueError) as info:
        biofx.transform(copy.deepcopy(model), weight_splitting_Gamma=2)
    msg = str(info.value)
    assert "'0'" in msg and "(9)" in msg and "(2)" in msg


def test_skipped_layers_not_validated():
    model = nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 5))  # last layer: 5 outputs, skipped
    biofx.BioConverter.mark_skip_weight_splitting(model[0])
    bio = biofx.transform(copy.deepcopy(model), weight_splitting_Gamma=2)
    assert not any((tags.get_tag(n) or {}).get("mechanism") == "weight_split" for n in bio_nodes(bio))


def test_last_layer_is_last_in_execution_order_not_definition_order():
    class Reordered(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 3)  # defined first, runs last
            self.body = nn.Linear(4, 8)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    bio = biofx.transform(Reordered(), weight_splitting_Gamma=2)
    layers = {t["layer"] for n in bio_nodes(bio) if (t := tags.get_tag(n)) and t["mechanism"] == "weight_split"}
    assert layers == {"body"}


def test_pass_alone_on_a_hand_built_graph():
    import torch.nn.functional as F
    from biofx import ops
    from biofx.passes import weight_split_pass

    from _graphs import check_tags, fc_graph, new_nodes

    gm, layer = fc_graph(weight_splitting_Gamma=GAMMA, weight_splitting_activation_function="tanh")
    layer.split = True
    before = {n.name for n in gm.graph.nodes}
    inserted = weight_split_pass(gm, [layer])
    gm.graph.lint()
    gm.recompile()
    assert inserted == new_nodes(gm, before)
    assert [(n.op, n.target) for n in inserted] == [
        ("call_module", "biofx_state.split_activation"), ("call_function", ops.weight_split)]
    check_tags(inserted, "weight_split", "weight_split")
    call = next(n for n in gm.graph.nodes if n.target is F.linear)
    assert list(call.users) == [inserted[0]]
    x = torch.randn(3, 4)
    expected = torch.relu(reference_split(torch.tanh(layer.module(x)), GAMMA, -1))
    torch.testing.assert_close(gm(x), expected)
    gm, layer = fc_graph(weight_splitting_Gamma=GAMMA)  # not planned to split (layer.split False): nothing
    assert weight_split_pass(gm, [layer]) == []
