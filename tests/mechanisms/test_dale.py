"""Dale's principle: signs per presynaptic unit, parametrization, projection, init."""

import pytest
import torch
import torch.nn as nn

import biofx


def presynaptic_signs_consistent(weight, axis):
    w = weight.detach().movedim(axis, 0).reshape(weight.shape[axis], -1)
    nonzero_pos = (w > 0).any(1)
    nonzero_neg = (w < 0).any(1)
    return not (nonzero_pos & nonzero_neg).any()


@pytest.mark.parametrize("dims", [0, 1, 2, 3])
def test_signs_per_presynaptic_unit_after_training(dims):
    if dims == 0:
        model, x = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)), torch.randn(8, 12)
    else:
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        model = nn.Sequential(conv(3, 8, 3, padding=1), nn.ReLU(), conv(8, 4, 3, padding=1))
        x = torch.randn(2, 3, *([5] * dims))
    bio = biofx.transform(model, apply_dales_principle=True, automatic=())
    opt = torch.optim.SGD(bio.parameters(), lr=1.0)  # large steps push stored weights across zero
    for _ in range(5):
        opt.zero_grad()
        bio(x).square().mean().backward()
        opt.step()
    for layer in bio.bio_layers():
        effective = biofx.ops.dale_weight(layer.weight, layer.dale_sign)
        assert presynaptic_signs_consistent(effective, axis=1)
        bio.enforce_dales_principle()
        assert presynaptic_signs_consistent(layer.weight, axis=1)
        torch.testing.assert_close(layer.weight, effective)


def test_forward_uses_constrained_weight():
    model = nn.Linear(6, 5)
    bio = biofx.transform(model, apply_dales_principle=True, fuzzy_lr_distribution="baseline")
    with torch.no_grad():
        model.weight.neg_()  # every stored weight now has the wrong sign
    x = torch.randn(3, 6)
    torch.testing.assert_close(bio(x), model.bias.expand(3, 5))


def test_initialization_and_excitatory_fraction():
    model = nn.Linear(100, 7)
    w0 = model.weight.detach().clone()
    bio = biofx.transform(model, apply_dales_principle=True, dale_excitatory_fraction=0.8)
    sign = bio.bio_layers()[0].dale_sign
    assert sign.shape == (1, 100) and int((sign > 0).sum()) == 80
    torch.testing.assert_close(model.weight, w0.abs() * sign)
    bio.dalian_network_initialization()
    torch.testing.assert_close(model.weight, w0.abs() * sign)


def test_grouped_conv_signs_follow_input_channels():
    conv = nn.Conv2d(4, 6, 3, groups=2)
    bio = biofx.transform(conv, apply_dales_principle=True, dale_excitatory_fraction=0.5)
    sign = bio.bio_layers()[0].dale_sign  # [out, in/groups, 1, 1]
    assert sign.shape == (6, 2, 1, 1)
    # out channels 0..2 read input channels 0,1; 3..5 read 2,3: rows within a group agree
    assert torch.equal(sign[0], sign[1]) and torch.equal(sign[3], sign[5])
    assert int((sign[[0, 3]] > 0).sum()) == 2


def test_reference_error_when_off():
    bio = biofx.transform(nn.Linear(3, 3))
    with pytest.raises(AttributeError, match="Can not enforce dales principle without apply_dales_principle set True"):
        bio.enforce_dales_principle()
    with pytest.raises(AttributeError, match="dalians network initialization"):
        bio.dalian_network_initialization()
