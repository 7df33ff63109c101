"""Volume-dependent plasticity through gradients, explicit and automatic."""

import copy

import torch
import torch.nn as nn

import biofx
from biofx import rng
from biofx.mechanisms import volume


def test_factor_statistics_match_formula():
    w = torch.linspace(-3, 3, 7).repeat_interleave(20000).view(7, -1)
    key, step = torch.tensor(11), torch.tensor(0)
    f = volume.factor(w, volume.seed(key, step), base_lr=0.1, stability_factor=2.0, lr_variability=0.2)
    mu = 0.1 * torch.exp(-2.0 * w.abs() / (w.abs() + 1))
    # |N(mu, 0.2 mu)| has mean ~ mu (folding is negligible at 5 sigma) and std 0.2 mu
    torch.testing.assert_close(f.mean(1), mu[:, 0], rtol=5e-3, atol=0)
    torch.testing.assert_close(f.std(1), 0.2 * mu[:, 0], rtol=3e-2, atol=0)
    assert (f >= 0).all()


def test_fresh_every_step_same_within_step():
    w = torch.randn(50, 50)
    key = torch.tensor(5)
    a = volume.factor(w, volume.seed(key, torch.tensor(1)), 0.1, 2.0, 0.2)
    b = volume.factor(w, volume.seed(key, torch.tensor(1)), 0.1, 2.0, 0.2)
    c = volume.factor(w, volume.seed(key, torch.tensor(2)), 0.1, 2.0, 0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def _models():
    plain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return plain, copy.deepcopy(plain)


def test_explicit_and_automatic_give_plain_grad_times_factor():
    plain, twin = _models()
    explicit = biofx.transform(twin, automatic=(), seed=1)
    auto = biofx.transform(copy.deepcopy(plain), automatic=("volume",), acts_on="gradient", seed=1)
    x = torch.randn(5, 8)
    plain(x).sum().backward()
    explicit(x).sum().backward()
    explicit.volume_dependent_lr()
    auto(x).sum().backward()
    for e, a, p in zip(explicit.bio_layers(), auto.bio_layers(), [plain[0], plain[2]]):
        cfg = e.config
        expected = p.weight.grad * volume.factor(p.weight, volume.seed(e.rng_key, e.step), cfg.base_lr, cfg.stability_factor, cfg.lr_variability)
        torch.testing.assert_close(e.weight.grad, expected)
        torch.testing.assert_close(a.weight.grad, expected)


def test_step_counter_advances_with_optimizer():
    bio = biofx.transform(nn.Linear(4, 4), automatic=("volume",))
    opt = torch.optim.SGD(bio.parameters(), lr=0.1)
    layer = bio.bio_layers()[0]
    for step in range(3):
        assert int(layer.step) == step
        opt.zero_grad()
        bio(torch.randn(2, 4)).sum().backward()
        opt.step()
    assert int(layer.step) == 3


def test_uses_counter_based_noise_not_global_rng():
    bio = biofx.transform(nn.Linear(4, 4), automatic=("volume",), acts_on="gradient", seed=2)
    x = torch.randn(2, 4)
    bio(x).sum().backward()
    g1 = bio.weight.grad.clone()
    bio.zero_grad()
    torch.manual_seed(12345)  # global RNG state is irrelevant
    bio(x).sum().backward()
    assert torch.equal(g1, bio.weight.grad)
    assert rng.VOLUME != rng.REJUVENATE_THRESHOLD
