"""Crystallization: the mask exactly, explicit and at the optimizer step."""

import copy

import pytest
import torch
import torch.nn as nn

import biofx
from biofx.mechanisms import crystallize


def test_mask_exact():
    w = torch.tensor([[1.0, -2.0, 0.0, 0.5], [1e-3, 3.0, -1.0, 0.0]])
    g = torch.tensor([[1e-6, 5.0, 1.0, 0.1], [0.0, 1e-5, -0.01, 0.0]])
    thresh = 1e-4
    # |g|/|w| < thresh  or  |g| > mean|w| (= 7.501/8)
    expected = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert torch.equal(crystallize.mask(w, g, thresh), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_mean_abs_is_the_layer_mean_magnitude(dtype):
    """mean|w| in float32 whatever w's dtype, to float32 summation of the exact mean; 0 for an empty weight."""
    w = torch.randn(300, 700, generator=torch.Generator().manual_seed(0)).to(dtype)
    got = crystallize.mean_abs(w)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(w.double().abs().mean().item(), rel=2e-5)
    assert crystallize.mean_abs(torch.empty(0, 4)).item() == 0.0


def test_dampens_only_masked_multipliers():
    bio = biofx.transform(nn.Linear(30, 20), automatic=(), crystal_thresh=1e-2, dampening_factor=0.5, seed=0)
    layer = bio.bio_layers()[0]
    bio(torch.randn(8, 30)).square().sum().backward()
    before = layer.fuzzy_lr.clone()
    hit = crystallize.mask(layer.weight, layer.weight.grad, 1e-2)
    assert 0 < hit.sum() < hit.numel()
    bio.crystallize()
    torch.testing.assert_close(layer.fuzzy_lr, torch.where(hit, before * 0.5, before))


def test_automatic_runs_once_per_optimizer_step_on_whole_gradient():
    base = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 3))
    auto = biofx.transform(
        copy.deepcopy(base), automatic=("fuzzy", "crystallize"), acts_on="gradient", crystal_thresh=5e-2, seed=4
    )
    manual = biofx.transform(copy.deepcopy(base), automatic=("fuzzy",), acts_on="gradient", crystal_thresh=5e-2, seed=4)
    opt_a = torch.optim.SGD(auto.parameters(), lr=0.05)
    opt_m = torch.optim.SGD(manual.parameters(), lr=0.05)
    for _ in range(3):
        x = torch.randn(6, 10)
        for model, opt in ((auto, opt_a), (manual, opt_m)):
            opt.zero_grad()
            model(x).square().mean().backward()
            if model is manual:
                model.crystallize()
            opt.step()
    for a, m in zip(auto.bio_layers(), manual.bio_layers()):
        torch.testing.assert_close(a.fuzzy_lr, m.fuzzy_lr)
        assert (a.fuzzy_lr != m.fuzzy_lr.new_tensor(0)).all()


def test_explicit_call_is_skipped_when_automatic():
    bio = biofx.transform(nn.Linear(5, 5), automatic=("crystallize",), crystal_thresh=1.0)
    bio(torch.randn(2, 5)).sum().backward()
    before = bio.bio_layers()[0].fuzzy_lr.clone()
    with pytest.warns(UserWarning, match="apply it twice"):
        bio.crystallize()
    assert torch.equal(bio.bio_layers()[0].fuzzy_lr, before)


@pytest.mark.parametrize("method", ["crystallize", "fuzzy_learning_rates", "volume_dependent_lr", "scale_grad"])
def test_gradient_methods_need_a_backward_first(method):
    bio = biofx.transform(nn.Linear(5, 5), automatic=())
    with pytest.raises(RuntimeError, match="No gradients found for the weights"):
        getattr(bio, method)()
