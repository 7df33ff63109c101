"""Rejuvenation: replacement statistics, NaN handling, no host sync, automatic schedule."""

import math

import pytest
import torch
import torch.nn as nn

import biofx
from biofx.mechanisms import rejuvenate


def test_replacement_probability_matches_erfc():
    dre = 8.0
    levels = torch.tensor([0.0, 0.02, 0.05, 0.1, 0.2, 0.4])
    w = levels.repeat_interleave(40000).view(len(levels), -1).clone()
    w[0, 0] = 1.0  # max|W| = 1
    original = w.clone()
    rejuvenate.rejuvenate_(w, dre, torch.tensor(3), torch.tensor(0))
    replaced = (w != original).float().mean(1)
    expected = torch.special.erfc(levels * dre / (math.sqrt(2) * 1.0))
    expected[0] = 1.0  # |w| = 0 < t almost surely
    torch.testing.assert_close(replaced, expected, atol=0.01, rtol=0)


def test_new_values_uniform_in_max_range_and_count():
    w = torch.full((200, 200), 1e-4)
    w[0, 0] = 2.0
    original = w.clone()
    count = rejuvenate.rejuvenate_(w, 8.0, torch.tensor(1), torch.tensor(0))
    changed = w != original
    assert count.dim() == 0 and int(count) == int(changed.sum())
    new = w[changed]
    assert new.abs().max() <= 2.0
    assert new.mean().abs() < 0.05 and new.std().item() == pytest.approx(2.0 / math.sqrt(3), rel=0.03)


def test_nan_and_inf_always_replaced_and_never_created():
    w = torch.randn(50, 50)
    w[3, 4] = float("nan")
    w[7, 8] = float("inf")
    w[9, 1] = 100.0  # large, never replaced
    rejuvenate.rejuvenate_(w, 8.0, torch.tensor(0), torch.tensor(0))
    assert torch.isfinite(w).all()
    assert w[9, 1] == 100.0


def test_lognormal_rule_option():
    w = torch.rand(100, 100) * 0.1
    count = rejuvenate.rejuvenate_(w, 8.0, torch.tensor(0), torch.tensor(0), rule="lognormal")
    assert int(count) > 0 and torch.isfinite(w).all() and w.abs().max() <= 1.0


def test_model_method_returns_tensor_and_varies_per_call():
    bio = biofx.transform(nn.Sequential(nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 30)))
    w0 = [l.weight.detach().clone() for l in bio.bio_layers()]
    count = bio.rejuvenate_weights()
    assert isinstance(count, torch.Tensor) and count.dim() == 0
    assert int(count) == sum(int((l.weight != w).sum()) for l, w in zip(bio.bio_layers(), w0))
    w1 = [l.weight.detach().clone() for l in bio.bio_layers()]
    bio.rejuvenate_weights()
    changed_again = [(l.weight != w) for l, w in zip(bio.bio_layers(), w1)]
    assert any(c.any() for c in changed_again)  # a fresh draw each call


def test_automatic_every_n_steps():
    bio = biofx.transform(nn.Linear(20, 20), rejuvenate_every=2, automatic=())
    opt = torch.optim.SGD(bio.parameters(), lr=0.0)  # lr 0: only rejuvenation changes weights
    layer = bio.bio_layers()[0]
    for step in range(1, 5):
        before = layer.weight.detach().clone()
        opt.zero_grad()
        bio(torch.randn(3, 20)).sum().backward()
        opt.step()
        changed = not torch.equal(before, layer.weight)
        assert changed == (step % 2 == 0)
    assert int(layer.rejuvenations) == 2


def test_dale_sign_kept_on_rejuvenation():
    bio = biofx.transform(nn.Sequential(nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 30)), apply_dales_principle=True)
    bio.rejuvenate_weights()
    for layer in bio.bio_layers():
        assert ((layer.weight * layer.dale_sign) >= 0).all()
