"""Dale's principle: parametrizations (column, DANN), recovery, balanced init, graph, checkpoints."""

import copy
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import biofx
from biofx import ops
from biofx.bio_module import BioModule
from biofx.mechanisms import dale
from biofx.passes import tags
from conftest import bio_nodes

MODES = ["dann", "column"]


def presynaptic_signs_consistent(weight, axis):
    w = weight.detach().movedim(axis, 0).reshape(weight.shape[axis], -1)
    nonzero_pos = (w > 0).any(1)
    nonzero_neg = (w < 0).any(1)
    return not (nonzero_pos & nonzero_neg).any()


def dale_only(model, mode, **extra):
    return biofx.transform(model, apply_dales_principle=True, dale_mode=mode, fuzzy_lr_distribution="baseline",
                           automatic=(), **extra)


def dann_formula(layer):
    """``|W_EE| − |W_EI|·|W_IE|`` of a Linear or Conv (out axis 0), written out with einsum."""
    inhibition = torch.einsum("ok,k...->o...", layer.dale_w_ei.abs(), layer.dale_w_ie.abs())
    return layer.weight.abs() - inhibition


def small_model(dims):
    if dims == 0:
        return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)), torch.randn(8, 12)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    return nn.Sequential(conv(3, 8, 3, padding=1), nn.ReLU(), conv(8, 4, 3, padding=1)), torch.randn(2, 3, *[5] * dims)


# -- the constraint holds at every forward -------------------------------------------------
@pytest.mark.parametrize("dims", [0, 1, 2, 3])
def test_column_signs_per_presynaptic_unit_after_training(dims):
    model, x = small_model(dims)
    bio = dale_only(model, "column")
    opt = torch.optim.SGD(bio.parameters(), lr=1.0)  # large steps push stored weights across zero
    for _ in range(5):
        opt.zero_grad()
        bio(x).square().mean().backward()
        opt.step()
    for layer in bio.bio_layers():
        effective = layer.dale_weight()
        torch.testing.assert_close(effective, layer.dale_sign * layer.weight.abs())
        assert presynaptic_signs_consistent(effective, axis=1)
        bio.enforce_dales_principle()  # stored weights projected, the forward unchanged
        assert presynaptic_signs_consistent(layer.weight, axis=1)
        torch.testing.assert_close(layer.weight, effective)


@pytest.mark.parametrize("dims", [0, 2])
def test_dann_forward_is_excitation_minus_interneurons(dims):
    model, x = small_model(dims)
    bio = dale_only(model, "dann")
    opt = torch.optim.SGD(bio.parameters(), lr=1.0)
    for _ in range(3):
        opt.zero_grad()
        bio(x).square().mean().backward()
        opt.step()
    first, second = model[0], model[2]
    call = F.linear if dims == 0 else (lambda h, w, b: F.conv2d(h, w, b, padding=1))
    expected = call(F.relu(call(x, dann_formula(first), first.bias)), dann_formula(second), second.bias)
    torch.testing.assert_close(bio(x), expected)
    bio.enforce_dales_principle()  # every stored weight non-negative, the forward unchanged
    for layer in (first, second):
        assert all((p >= 0).all() for p in (layer.weight, layer.dale_w_ei, layer.dale_w_ie))
    torch.testing.assert_close(bio(x), expected)


def test_inhibit_contracts_over_the_out_axis():
    """A weight stored [in, out] (Hugging Face Conv1D): the interneurons replace axis 1."""
    w, w_ei, w_ie = torch.randn(5, 6), torch.randn(6, 2), torch.randn(5, 2)
    torch.testing.assert_close(dale.inhibit(w, w_ei, w_ie, out_axis=1), w - w_ie.abs() @ w_ei.abs().T)


# -- a wrong-signed stored weight recovers -------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_wrong_signed_weight_gets_gradient_and_recovers(mode):
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    bio = dale_only(layer, mode, dale_excitatory_fraction=0.5 if mode == "column" else 0.8)
    state = bio.bio_layers()[0]
    target = state.dale_weight().detach() * 2  # reachable: same signs, larger magnitudes
    with torch.no_grad():
        layer.weight.copy_(-state.dale_sign * layer.weight.abs())  # every stored weight wrong-signed
    x = torch.randn(64, 4)
    y = F.linear(x, target)
    F.mse_loss(bio(x) - layer.bias, y).backward()
    assert (layer.weight.grad != 0).all()  # sign·relu(sign·w) would give zero here
    opt = torch.optim.Adam(bio.parameters(), lr=0.1)
    for _ in range(150):
        opt.zero_grad()
        F.mse_loss(bio(x) - layer.bias, y).backward()
        opt.step()
    torch.testing.assert_close(state.dale_weight(), target, atol=0.02, rtol=0)


# -- balanced initialization ---------------------------------------------------------------
def test_column_init_balances_every_unit():
    model = nn.Linear(100, 7)
    w0 = model.weight.detach().clone()
    bio = dale_only(model, "column", dale_excitatory_fraction=0.8)
    sign = bio.bio_layers()[0].dale_sign
    assert sign.shape == (1, 100) and int((sign > 0).sum()) == 80
    w = model.weight.detach()
    torch.testing.assert_close(w.sum(1), torch.zeros(7), atol=1e-5, rtol=0)  # Σ_j w_ij = 0
    excitatory = (sign > 0).expand_as(w)
    torch.testing.assert_close(w[excitatory], w0.abs()[excitatory])  # E magnitudes kept
    scale = (w0.abs() * excitatory).sum(1) / (w0.abs() * ~excitatory).sum(1)
    torch.testing.assert_close(w, torch.where(excitatory, w0.abs(), -w0.abs() * scale[:, None]))
    bio.dalian_network_initialization()  # idempotent
    torch.testing.assert_close(model.weight.detach(), w)


@pytest.mark.parametrize("layer", [nn.Linear(200, 64), nn.Conv2d(16, 32, 3)], ids=["linear", "conv"])
def test_dann_init_balanced_with_the_layers_variance(layer):
    std0 = layer.weight.detach().std()
    bio = dale_only(layer, "dann", dale_excitatory_fraction=0.8)
    n_e = layer.weight.shape[0]
    assert layer.dale_w_ei.shape == (n_e, n_e // 4) and layer.dale_w_ie.shape == (n_e // 4, *layer.weight.shape[1:])
    assert (layer.weight >= 0).all() and (layer.dale_w_ie >= 0).all()
    w_ee = layer.weight.detach()
    # W_EE ~ Gamma(h², σ/h): std σ, mean h·σ, so its weights start away from the bound 0
    assert w_ee.std().item() == pytest.approx(std0.item(), rel=0.1)
    assert w_ee.mean().item() == pytest.approx(dale.HEADROOM * std0.item(), rel=0.05)
    assert (w_ee < 0.5 * std0).float().mean() < 0.01  # Exp(σ) (h = 1) puts 39 % there
    torch.testing.assert_close(layer.dale_w_ei, torch.full_like(layer.dale_w_ei, 4 / n_e))
    mean_row = layer.weight.detach().mean(0, keepdim=True)
    torch.testing.assert_close(layer.dale_w_ie.mean(0, keepdim=True), mean_row)  # on average the mean row
    assert not torch.allclose(layer.dale_w_ie[0], layer.dale_w_ie[1])  # distinct interneurons
    w = bio.bio_layers()[0].dale_weight().detach().flatten(1)
    torch.testing.assert_close(w.sum(0), torch.zeros(w.shape[1]), atol=1e-5, rtol=0)  # inhibition = mean E
    assert w.sum(1).abs().mean() < 0.15 * w.abs().sum(1).mean()  # each unit's input: balanced
    assert w.std().item() == pytest.approx(std0.item(), rel=0.1)  # the layer's init variance


@pytest.mark.parametrize("acts_on", ["update", "gradient"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_dann_interneuron_updates_are_corrected(acts_on, optimizer):
    """ΔW_EI = Δ/d and ΔW_IE = Δ/√n_e, where Δ is what the optimizer alone would do with the
    same gradients; W_EE and the bias take the optimizer's own step. Gradient scaling is
    exact for SGD; under Adam only the update mode keeps the factors."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    bio = dale_only(model, "dann", acts_on=acts_on)
    make = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.1), "adam": lambda ps: torch.optim.Adam(ps, lr=0.01)}[optimizer]
    x = torch.randn(4, 3, 6, 6)
    names = [name for name, _ in bio.named_parameters()]
    params = dict(bio.named_parameters())
    shadow = {name: p.detach().clone().requires_grad_() for name, p in params.items()}
    shadow_opt = make(list(shadow.values()))
    opt = make(list(params.values()))
    for _ in range(3):
        opt.zero_grad()
        bio(x).square().mean().backward()
        before = {name: p.detach().clone() for name, p in params.items()}
        for name in names:  # the shadow optimizer steps from the same point with the same gradient
            shadow[name].data.copy_(before[name])
            shadow[name].grad = params[name].grad.clone()
        shadow_opt.step()
        opt.step()
        for index, name in ((0, "0."), (3, "3.")):
            layer = model[index]
            n_e, d = layer.weight.shape[0], layer.weight[0].numel()
            expected = {"weight": 1.0, "bias": 1.0, "dale_w_ei": 1 / d, "dale_w_ie": n_e**-0.5}
            for param, scale in expected.items():
                full = shadow[name + param].detach() - before[name + param]
                moved = params[name + param].detach() - before[name + param]
                if optimizer == "adam" and acts_on == "gradient" and scale != 1.0:
                    assert not torch.allclose(moved, scale * full)  # Adam cancels a scaled gradient
                else:
                    torch.testing.assert_close(moved, scale * full, rtol=1e-4, atol=1e-7)


def test_interneuron_count_follows_the_excitatory_fraction():
    assert [dale.interneurons(64, p, 100) for p in (0.8, 0.5, 0.99, 1.0)] == [16, 64, 1, 0]
    assert dale.interneurons(64, 0.1, 100) == dale.interneurons(64, 1e-300, 100) == 64  # at most min(n_e, d)
    assert dale.interneurons(64, 0.1, 9) == 9


# -- graph and parameters ------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_graph_nodes_and_tags(mode):
    bio = dale_only(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), mode)
    linear = next(n for n in bio_nodes(bio) if n.target is F.linear)
    chain = [ops.dale_inhibit, ops.dale_weight] if mode == "dann" else [ops.dale_weight]
    node = linear.args[1]
    for op in chain:
        assert node.target is op
        assert tags.get_tag(node) == {"mechanism": "dale", "layer": "0", "pass": "dale"}
        node = node.args[0]
    assert node.op == "get_attr" and node.target == "weight"  # the layer's own graph
    names = dict(bio.named_parameters())
    assert "0.weight" in names
    assert ({"0.dale_w_ei", "0.dale_w_ie"} <= names.keys()) == (mode == "dann")


def test_bad_mode_and_fraction_name_the_field():
    with pytest.raises(ValueError, match="dale_mode must be 'dann' or 'column'"):
        biofx.BioConfig(dale_mode="rows")
    with pytest.raises(ValueError, match="dale_excitatory_fraction=0 .*dale_mode='column'"):
        biofx.BioConfig(apply_dales_principle=True, dale_excitatory_fraction=0.0)
    biofx.BioConfig(apply_dales_principle=True, dale_excitatory_fraction=0.0, dale_mode="column")


@pytest.mark.parametrize("mode", MODES)
def test_plain_state_dict_holds_the_weight_the_forward_uses(mode):
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    bio = dale_only(model, mode)
    with torch.no_grad():
        model[0].weight.neg_()  # stored signs differ from the used ones
    plain = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    plain.load_state_dict(bio.plain_state_dict())  # strict
    x = torch.randn(4, 5)
    torch.testing.assert_close(plain(x), bio(x))
    bio.load_state_dict(plain.state_dict())  # a plain checkpoint loads (interneurons kept)


@pytest.mark.parametrize("mode", MODES)
def test_rejuvenated_weights_take_the_unit_sign(mode):
    bio = dale_only(nn.Sequential(nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 30)), mode,
                    rejuvenation_parameter_dre=1.0)
    assert int(bio.rejuvenate_weights()) > 0
    for layer in bio.bio_layers():
        assert ((layer.weight * layer.dale_sign) >= 0).all()


def test_grouped_conv_signs_follow_input_channels():
    conv = nn.Conv2d(4, 6, 3, groups=2)
    bio = dale_only(conv, "column", dale_excitatory_fraction=0.5)
    sign = bio.bio_layers()[0].dale_sign  # [out, in/groups, 1, 1]
    assert sign.shape == (6, 2, 1, 1)
    # out channels 0..2 read input channels 0,1; 3..5 read 2,3: rows within a group agree
    assert torch.equal(sign[0], sign[1]) and torch.equal(sign[3], sign[5])
    assert int((sign[[0, 3]] > 0).sum()) == 2


def test_standalone_bio_module_needs_column_mode():
    config = biofx.BioConfig(apply_dales_principle=True)
    with pytest.raises(NotImplementedError, match="dale_mode='column'"):
        BioModule(lambda: nn.Linear(4, 3), config)
    layer = nn.Linear(4, 3)
    module = BioModule(lambda: layer, config.replace(dale_mode="column"))
    module.enforce_dales_principle()
    assert (layer.weight * module.dale_sign >= 0).all()


def test_reference_error_when_off():
    bio = biofx.transform(nn.Linear(3, 3))
    with pytest.raises(AttributeError, match="Can not enforce dales principle without apply_dales_principle set True"):
        bio.enforce_dales_principle()
    with pytest.raises(AttributeError, match="dalians network initialization"):
        bio.dalian_network_initialization()
